"""Host-free helpers shared by the tests of both tiers: the relative error of numerical comparisons, tiny SUPIR
networks and state dicts in the official layouts, malicious and damaged weight files."""
import csv
import json
import math
import os
import pickle

import torch

from supir_restore.supir.model.checkpoint import vae_encoder_shapes
from supir_restore.supir.model.control import SUPIRControl, TrunkConfig, adaptors_for

LAYOUT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "supir-v0-layout.json")

TINY_UNET = {"in_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1, "context_dim": 64,
             "adm_in_channels": 48}


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64: the error measure docs/stablesr.md reports. Unlike an
    absolute difference it does not grow with the values' scale (a latent scaled by 1/0.18215, a sum of 200
    steps), so its tolerance follows from the float format's rounding alone, whatever the CPU's kernels."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    error, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    return error / scale if scale > 0 else (0.0 if error == 0 else math.inf)


def assert_close_relative(actual, expected, rtol: float) -> None:
    """``actual`` equals ``expected`` to within ``rtol`` of expected's largest magnitude (see relative_error). Each
    call says in a comment why its ``rtol``; comparisons that are exact by design use rtol=0, atol=0 instead."""
    error = relative_error(actual, expected)
    assert error <= rtol, f"relative error max|a-b|/max|b| = {error:.3g} > {rtol:.3g} allowed"


def seeded(shape, seed, scale=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    return t / math.sqrt(math.prod(shape[1:])) if scale is None and len(shape) > 1 else t * (scale or 0.1)


def tiny_control(seed=0) -> SUPIRControl:
    trunk = TrunkConfig.for_unet(TINY_UNET)
    net = SUPIRControl(trunk, adaptors_for(trunk))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(seeded(p.shape, seed * 1000 + i))
    return net


def tiny_encoder_sd(seed=0) -> dict:
    shapes = vae_encoder_shapes(ch=32, in_ch=3, out_ch=8, widths=[32, 32], n_res=1)
    return {k: seeded(s, seed + i) for i, (k, s) in enumerate(shapes.items())}


def official_state_dict(seed=0, mask=True) -> dict:
    """Keys as in SUPIR-v0Q.ckpt: model.control_model.*, model.diffusion_model.project_modules.*,
    first_stage_model.denoise_encoder.* (and mask_LQ)."""
    sd = {}
    for k, v in tiny_control(seed).state_dict().items():
        sd[("model." if k.startswith("control_model.") else "model.diffusion_model.") + k] = v
    sd.update({"first_stage_model.denoise_encoder." + k: v for k, v in tiny_encoder_sd(seed).items()})
    if mask:
        sd["model.control_model.mask_LQ"] = torch.zeros(1, 4, 64, 64)
    return sd


def full_layout() -> dict:
    with open(LAYOUT_JSON) as f:
        return json.load(f)


# Weight files a loader must refuse: pickles that run code or hold foreign objects, and damaged files.


class RunsAShellCommand:
    """Unpickling calls os.system, which touches the marker file: a GLOBAL of a module torch blocks."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpensAFile:
    """Unpickling calls open(), which creates the marker file: a builtin torch does not allow."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


class ForeignObject:
    """A class torch's weights-only unpickler does not know: an 'Unsupported global'."""

    def __init__(self, marker):
        self.marker = marker


def malicious_files(folder, payload: dict) -> dict[str, str]:
    """The same payload as a torch zip file, a legacy torch file and a bare pickle, per exploit."""
    marker = os.path.join(folder, "ran")
    files = {}
    for exploit in (RunsAShellCommand, OpensAFile, ForeignObject):
        obj = payload | {"payload": exploit(marker)}
        for kind in ("zip", "legacy", "bare"):
            path = os.path.join(folder, f"{exploit.__name__}_{kind}.pth")
            if kind == "bare":
                with open(path, "wb") as f:
                    pickle.dump(obj, f, protocol=2)
            else:
                torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
            files[f"{exploit.__name__}-{kind}"] = path
    return files


def damaged_files(folder, good: str) -> dict[str, str]:
    """A truncated copy of ``good`` (same extension), an empty file and a safetensors file of random bytes."""
    data = open(good, "rb").read()
    stem, ext = os.path.splitext(os.path.basename(good))
    files = {"truncated": data[:len(data) // 2], "empty": b"", "random.safetensors": os.urandom(2048)}
    paths = {}
    for what, content in files.items():
        path = os.path.join(folder, what if what.endswith(".safetensors") else f"{stem}_{what}{ext}")
        with open(path, "wb") as f:
            f.write(content)
        paths[what] = path
    return paths


def read_csv(path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
