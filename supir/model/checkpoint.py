"""SUPIR files: official ``.ckpt`` pickles or fp16/bf16 ``.safetensors`` (read by :mod:`supir.weights`), prefixed
or prefix-less keys, split into the control network, the adaptors and the denoise encoder, with every unknown,
missing or mis-shaped tensor reported by name."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..checks import non_finite_tensors
from ..weights import WeightsFileError, check_layout, is_safetensors, names, read_state_dict, safetensors_keys
from .control import SUPIRConfigError, SUPIRControl

HELP = ("SUPIR files are SUPIR-v0Q/v0F (.ckpt or .safetensors) and go in ComfyUI/models/supir; "
        "the SDXL checkpoint goes in models/checkpoints")

# (accepted prefix, group, prefix in the group's state dict)
_PREFIXES = (
    ("model.control_model.", "control", "control_model."),
    ("control_model.", "control", "control_model."),
    ("model.diffusion_model.project_modules.", "control", "project_modules."),
    ("diffusion_model.project_modules.", "control", "project_modules."),
    ("project_modules.", "control", "project_modules."),
    ("first_stage_model.denoise_encoder.", "denoise_encoder", ""),
    ("denoise_encoder.", "denoise_encoder", ""),
)
_BARE_TRUNK = ("time_embed.", "label_emb.", "input_hint_block.", "input_blocks.", "middle_block.")
_DROPPED = re.compile(r"(^|\.)mask_LQ$")


class SUPIRCheckpointError(WeightsFileError):
    """A readable file that is not a SUPIR checkpoint; the message says what is wrong and what to do."""


@dataclass
class SUPIRWeights:
    """A SUPIR file's tensors by group. ``control`` keys: ``control_model.*`` and ``project_modules.*``;
    ``denoise_encoder`` keys: LDM VAE-encoder names (``conv_in.weight``, ``down.0.block.0.norm1.weight``, …)."""
    control: dict
    denoise_encoder: dict


def looks_like_supir(path: str) -> bool:
    """Whether a file in a folder shared with other models (ComfyUI's models/model_patches) is a SUPIR file: a
    .safetensors whose header names SUPIR's hint block, or a pickle named like one (a pickle's keys cannot be
    listed without loading it)."""
    name = os.path.basename(path).lower()
    if not is_safetensors(name):
        return "supir" in name
    return any(k.endswith("control_model.input_hint_block.0.weight") for k in safetensors_keys(path) or ())


def split_supir_state_dict(sd: dict, name: str = "checkpoint") -> SUPIRWeights:
    """Sort a SUPIR state dict into its groups, accepting every known key prefix; ``mask_LQ`` is dropped."""
    groups = {"control": {}, "denoise_encoder": {}}
    unknown = []
    for key, value in sd.items():
        if _DROPPED.search(key):
            continue
        for prefix, group, new_prefix in _PREFIXES:
            if key.startswith(prefix):
                groups[group][new_prefix + key[len(prefix):]] = value
                break
        else:
            if key.startswith(_BARE_TRUNK):
                groups["control"]["control_model." + key] = value
            else:
                unknown.append(key)
    if not any(k.startswith("control_model.") for k in groups["control"]):
        raise SUPIRCheckpointError(f"{name}: {_what_it_is(sd)} {HELP}")
    if unknown:
        raise SUPIRCheckpointError(f"{name}: {len(unknown)} tensor(s) that are not part of SUPIR: "
                                   f"{names(unknown)}. {HELP}")
    if not groups["denoise_encoder"]:
        raise SUPIRCheckpointError(f"{name}: the denoise encoder (first_stage_model.denoise_encoder.*) is missing; "
                                   f"this file is incomplete. Use a full SUPIR-v0Q/v0F file.")
    return SUPIRWeights(groups["control"], groups["denoise_encoder"])


def _what_it_is(sd: dict) -> str:
    keys = list(sd)
    if any(k.startswith(("model.diffusion_model.input_blocks", "diffusion_model.input_blocks", "input_blocks.")) for k in keys):
        return "this is a Stable Diffusion UNet/checkpoint, not a SUPIR file (no control_model tensors)."
    if any("lora_" in k or ".lora." in k for k in keys):
        return "this is a LoRA, not a SUPIR file; load it with a LoRA loader."
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        return "this is a VAE, not a SUPIR file."
    return f"not a SUPIR file: no control_model tensors among {len(keys)} (first: {names(keys, 3)})."


def control_layout(control: dict, name: str = "checkpoint") -> SUPIRControl:
    """Build the network described by the control tensors on the meta device and check every tensor fits it."""
    try:
        net = SUPIRControl.from_state_dict_shapes(control, device="meta")
    except SUPIRConfigError as e:
        raise SUPIRCheckpointError(f"{name}: {e}. The file is damaged or not a SUPIR checkpoint.") from e
    check_layout({k: v.shape for k, v in net.state_dict().items()}, {k: v.shape for k, v in control.items()},
                 "control network", name)
    return net


def vae_encoder_layout(sd: dict) -> dict:
    """Expected ``{key: shape}`` of an LDM (SD/SDXL) VAE encoder whose width, depth and latent size are read
    from ``sd``'s own ``conv_in``, ``down.*`` and ``conv_out`` shapes."""
    try:
        ch, in_ch = sd["conv_in.weight"].shape[:2]
        out_ch = sd["conv_out.weight"].shape[0]
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.", k))})
        widths = [sd[f"down.{i}.block.0.conv1.weight"].shape[0] for i in levels]
        n_res = len({m.group(1) for k in sd if (m := re.match(r"down\.0\.block\.(\d+)\.", k))})
    except (KeyError, IndexError) as e:
        raise SUPIRCheckpointError(f"the denoise encoder lacks {e}; it is not an SD/SDXL VAE encoder") from e
    if not levels or levels != list(range(len(levels))):
        raise SUPIRCheckpointError(f"the denoise encoder has down levels {levels}; expected 0..N-1")
    return vae_encoder_shapes(ch, in_ch, out_ch, widths, n_res)


def vae_encoder_shapes(ch: int, in_ch: int, out_ch: int, widths: list[int], n_res: int) -> dict:
    """``{key: shape}`` of an LDM VAE encoder: conv_in to ``ch``, ``n_res`` ResBlocks per level of ``widths``,
    a downsample between levels, a middle block with one attention, conv_out to ``out_ch`` (2 × latent)."""
    def conv(key, cout, cin, k):
        return {f"{key}.weight": (cout, cin, k, k), f"{key}.bias": (cout,)}

    def norm(key, c):
        return {f"{key}.weight": (c,), f"{key}.bias": (c,)}

    def res(key, cin, cout):
        out = {**norm(f"{key}.norm1", cin), **conv(f"{key}.conv1", cout, cin, 3),
               **norm(f"{key}.norm2", cout), **conv(f"{key}.conv2", cout, cout, 3)}
        return out | (conv(f"{key}.nin_shortcut", cout, cin, 1) if cin != cout else {})

    layout, c = conv("conv_in", ch, in_ch, 3), ch
    for i, w in enumerate(widths):
        for j in range(n_res):
            layout |= res(f"down.{i}.block.{j}", c, w)
            c = w
        if i < len(widths) - 1:
            layout |= conv(f"down.{i}.downsample.conv", c, c, 3)
    layout |= res("mid.block_1", c, c) | norm("mid.attn_1.norm", c)
    for p in ("q", "k", "v", "proj_out"):
        layout |= conv(f"mid.attn_1.{p}", c, c, 1)
    return layout | res("mid.block_2", c, c) | norm("norm_out", c) | conv("conv_out", out_ch, c, 3)


def load_supir_weights(path: str, dtype: torch.dtype | None = None) -> tuple[SUPIRWeights, SUPIRControl]:
    """Read and fully validate a SUPIR file (``dtype``: the control network's storage, converted while reading as
    :func:`read_state_dict` does; the denoise encoder stays as stored). Returns its tensors and the (meta-device)
    network they fit."""
    name = os.path.basename(path)
    weights = split_supir_state_dict(read_state_dict(path, dtype, lambda key: "denoise_encoder." not in key), name)
    return weights, check_supir_weights(weights, name)


def check_supir_weights(weights: SUPIRWeights, name: str) -> SUPIRControl:
    """Every tensor finite and fitting the network its shapes describe; returns that network on the meta device."""
    if bad := non_finite_tensors(weights.control | {f"denoise_encoder.{k}": v
                                                    for k, v in weights.denoise_encoder.items()}):
        raise SUPIRCheckpointError(f"{name}: {len(bad)} tensor(s) hold NaN or infinite values ({names(bad, 4)}); "
                                   f"the file is damaged and would turn every restoration black. Download it again.")
    net = control_layout(weights.control, name)
    check_layout(vae_encoder_layout(weights.denoise_encoder),
                 {k: v.shape for k, v in weights.denoise_encoder.items()}, "denoise encoder", name)
    return net
