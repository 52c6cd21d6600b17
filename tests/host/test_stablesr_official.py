"""Tier 2, against the official code: the pack's StableSR port beside IceClear/StableSR's own modules, imported at
test time from the checkout that STABLESR_SOURCE names (none of its code is in this repository). Both sides get
the same random weights, written once in the official checkpoint layout and loaded by each side's loader: the
time-aware encoder's features, the SPADE-patched UNet (eps, and v through ComfyUI's model sampling), fixed-noise
respaced DDPM runs (the official sample_canvas against ComfyUI's ddpm sampler on the patched MODEL) and the tiled
canvas against tiled aggregation. Measured errors: docs/stablesr.md, "Parity with the official code"."""
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import sys
import types

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

SOURCE = os.path.abspath(os.environ.get("STABLESR_SOURCE", ""))
if not os.path.isfile(os.path.join(SOURCE, "ldm", "models", "diffusion", "ddpm.py")):
    pytest.skip("the official-code parity tests need an IceClear/StableSR checkout: set STABLESR_SOURCE to its "
                "folder", allow_module_level=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import comfy.k_diffusion.sampling  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402

from supir_restore.supir.host.stablesr import apply_stablesr, load_stablesr  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.host.stablesr_restore import StableSRSampler, stablesr_sigmas  # noqa: E402
from supir_restore.supir.stablesr.schedule import respaced_timesteps  # noqa: E402
from helpers import assert_close_relative, relative_error  # noqa: E402
from tiny_models import seeded_init_, tiny_sd21  # noqa: E402

LAYOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "stablesr-layout.json")
# max |ours - official| / max |official|: the same float32 maths in another order (ComfyUI's attention and ops,
# batched CFG); measured up to 1.1e-5 (docs/stablesr.md), so 1e-4 leaves room for other CPUs' kernels
TOLERANCE = 1e-4
# the official configs (configs/stableSRNew/v2-finetune_text_T_512.yaml) at 32 base channels: the tiny SD 2.1
# UNet of tiny_models.tiny_sd21 with SPADE layers, and a time-aware encoder of width 32 with 64-channel features
TINY_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_head_channels=32, use_spatial_transformer=True,
                 use_linear_in_transformer=True, transformer_depth=1, context_dim=1024, use_checkpoint=False,
                 legacy=False, semb_channels=64)
TINY_ENCODER = dict(image_size=96, in_channels=4, model_channels=32, out_channels=64, num_res_blocks=2,
                    attention_resolutions=[4, 2, 1], dropout=0, channel_mult=[1, 1, 2, 2], conv_resample=True, dims=2,
                    use_checkpoint=False, use_fp16=False, num_heads=4, num_head_channels=-1, num_heads_upsample=-1,
                    use_scale_shift_norm=False, resblock_updown=False, use_new_attention_order=False)
FULL_UNET = {**TINY_UNET, "model_channels": 320, "num_head_channels": 64, "semb_channels": 256}
FULL_ENCODER = {**TINY_ENCODER, "model_channels": 256, "out_channels": 256}

# training and image-IO packages the official modules import at module level but sampling never calls
STUB_ROOTS = ("basicsr", "cv2", "matplotlib", "omegaconf", "pytorch_lightning", "sklearn", "taming", "torchvision")
STUB_MODULES = ("ldm.models.autoencoder",)  # the VAE/CFW classes; ddpm.py imports them, sampling does not use them


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *args, **kwargs: None})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stand-ins for STUB_ROOTS and STUB_MODULES; a submodule of a package that is really installed and already
    imported (torchvision under ComfyUI) is imported for real when it exists."""

    def __init__(self):
        self.made = []

    def find_spec(self, name, path=None, target=None):
        root = name.partition(".")[0]
        if name not in STUB_MODULES and root not in STUB_ROOTS:
            return None
        if root in sys.modules and not isinstance(sys.modules[root], _Stub) and name not in STUB_MODULES:
            if importlib.machinery.PathFinder.find_spec(name, path) is not None:
                return None
        return importlib.util.spec_from_loader(name, self, is_package=True)

    def create_module(self, spec):
        module = _Stub(spec.name)
        self.made.append(module)
        return module

    def exec_module(self, module):
        module.__path__ = []
        if module.__name__ == "pytorch_lightning":
            module.LightningModule = torch.nn.Module
        elif module.__name__ == "pytorch_lightning.utilities.distributed":
            module.rank_zero_only = lambda f: f


@contextlib.contextmanager
def official_code():
    """The official checkout importable (``ldm.*``), with stand-ins for its unused imports, for the length of the
    block; the stand-ins are removed afterwards, the imported official modules stay."""
    finder = _StubFinder()
    sys.meta_path.insert(0, finder)
    sys.path.insert(0, SOURCE)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print parameter lists
            yield importlib.import_module("ldm.models.diffusion.ddpm")
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(SOURCE)
        for module in finder.made:
            name = module.__name__
            if sys.modules.get(name) is module:
                del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                delattr(sys.modules[parent], child)


def official_model(parameterization="eps", unet=TINY_UNET, encoder=TINY_ENCODER, seed=0):
    """The official LatentDiffusionSRTextWT (no VAE or text encoder: the runs here start from latents and a
    context) with seeded weights in every layer, the zero-initialised ones included."""
    with official_code() as ddpm:
        prefix = "ldm.modules.diffusionmodules.openaimodel."
        model = ddpm.LatentDiffusionSRTextWT(
            first_stage_config={"target": "torch.nn.Identity"}, cond_stage_config={"target": "torch.nn.Identity"},
            structcond_stage_config={"target": prefix + "EncoderUNetModelWT", "params": encoder},
            unet_config={"target": prefix + "UNetModelDualcondV2", "params": unet}, conditioning_key="crossattn",
            parameterization=parameterization, scale_factor=0.18215, time_replace=1000, use_ema=False,
            timesteps=1000, linear_start=0.00085, linear_end=0.012, channels=4, image_size=64, monitor=None)
    seeded_init_(model.model.diffusion_model, seed)
    seeded_init_(model.structcond_stage_model, seed + 1)
    model.configs = types.SimpleNamespace(model=types.SimpleNamespace(params=types.SimpleNamespace(channels=4)))
    return model.eval(), ddpm


def write_official_file(model, path, dtype=torch.float32) -> str:
    """The model's state dict as the official checkpoints store it: a pickle with ``state_dict`` holding
    model.diffusion_model.* (SD 2.x UNet and SPADE), structcond_stage_model.* and the fp32 schedule buffers;
    the weights in ``dtype``."""
    weights = {name for name, _ in model.named_parameters()}
    torch.save({"state_dict": {k: v.to(dtype) if k in weights else v for k, v in model.state_dict().items()}}, path)
    return str(path)


def comfy_unet_from_file(path, v_prediction=False):
    """The tiny SD 2.1 MODEL with the file's UNet tensors, as ComfyUI's checkpoint loader takes them
    (model.diffusion_model.*): every UNet tensor is used, and only the SPADE tensors are left over."""
    model = tiny_sd21(seed=99, v_prediction=v_prediction)
    sd = torch.load(path, weights_only=True)["state_dict"]
    unet = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    missing, unexpected = model.model.diffusion_model.load_state_dict(unet, strict=False)
    assert not missing and unexpected and all(".spade." in k for k in unexpected)
    return model


def register_official_schedule(model, ddpm, steps):
    """The schedule set-up of the official DDPM scripts (scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py,
    before sampling): SD's linear betas, then the betas respaced to ``steps`` by space_timesteps. Returns the
    un-respaced sqrt(ᾱ) and sqrt(1 - ᾱ) tables x_T is made with."""
    model.register_schedule(given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=0.00085,
                            linear_end=0.0120, cosine_s=8e-3)
    model.num_timesteps = 1000
    tables = model.sqrt_alphas_cumprod.clone(), model.sqrt_one_minus_alphas_cumprod.clone()
    use = set(ddpm.space_timesteps(1000, [steps]))
    last, betas = 1.0, []
    for i, alpha_cumprod in enumerate(model.alphas_cumprod):
        if i in use:
            betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
    model.register_schedule(given_betas=np.array([b.numpy() for b in betas]), timesteps=len(betas))
    model.num_timesteps = 1000
    model.ori_timesteps = sorted(use)
    return tables


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def compare(name, ours, official, tolerance=TOLERANCE):
    """Max abs and relative (to the official output's largest magnitude) difference, printed for the docs."""
    rel = relative_error(ours, official)
    print(f"PARITY {name}: max abs {(ours.double() - official.double()).abs().max().item():.2e}, rel {rel:.2e}")
    assert rel <= tolerance, f"{name}: relative error {rel:.2e} > {tolerance:g}"
    return rel


class Pack:
    """The pack's side: the StableSR file loaded by load_stablesr and applied to a ComfyUI SD 2.x MODEL."""

    def __init__(self, model, path, z_lr):
        self.model = model
        self.sr = load_stablesr(path, "fp32")
        self.latent_format = model.get_model_object("latent_format")
        self.patched = self.restoring(z_lr)

    def restoring(self, z_lr):
        """Apply StableSR toward the (scaled) LR latent ``z_lr``; Apply StableSR takes a raw LATENT."""
        return apply_stablesr(self.model, self.sr, self.latent_format.process_out(z_lr))

    def unet(self, x_vp, t, context):
        """One UNet call as a sampler makes it, at σ(t): (UNet input, timestep, UNet output, denoised x0)."""
        sigma = self.model.get_model_object("model_sampling").sigma(torch.tensor([float(t)]))
        m, calls = recording(self.patched)
        comfy.model_management.load_models_gpu([m])
        with torch.no_grad():
            denoised = m.model.apply_model(x_vp * (1 + sigma ** 2).sqrt(), sigma, c_crossattn=context,
                                           transformer_options={**m.model_options["transformer_options"],
                                                                "wrappers": m.wrappers})
        (x, timesteps, out), = calls
        return x, timesteps, out, denoised

    def ddpm(self, z_lr, eps, noises, steps, context, tiles=None):
        """The pack's StableSR DDPM (StableSR Sigmas + StableSR Sampler, start lr_latent: x = z_lr + σ_max ε) with
        the given per-step noise; ``tiles``: (tile, stride, tile batch) for tiled aggregation. Returns the sampled
        latent and the timestep of each step's UNet calls."""
        model, calls = recording(self.restoring(z_lr))
        if tiles is not None:
            model = apply_tiled_aggregation(model, tiles[0], tiles[1], tile_batch_size=tiles[2], weights="official")
        sigmas = stablesr_sigmas(model, steps)
        queue = iter(noises)
        sampler = StableSRSampler(comfy.k_diffusion.sampling.sample_ddpm, "lr_latent",
                                  extra_options={"noise_sampler": lambda sigma, sigma_next: next(queue)})
        out = comfy.sample.sample_custom(model, eps, 1.0, sampler, sigmas, [[context, {}]], [[context, {}]],
                                         self.latent_format.process_out(z_lr), disable_pbar=True, seed=0)
        timesteps = [int(t[0]) for _, t, _ in calls]
        return self.latent_format.process_in(out), [t for i, t in enumerate(timesteps) if t not in timesteps[:i]]


def recording(model):
    """A clone of a MODEL that records each UNet call's (input, timesteps, output) in the returned list."""
    calls = []

    def recorder(executor, x, timesteps, *args, **kwargs):
        out = executor(x, timesteps, *args, **kwargs)
        calls.append((x, timesteps, out))
        return out
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "parity_recorder", recorder)
    return m, calls


def official_ddpm(model, ddpm, z_lr, eps, noises, steps, context, tile, overlap=0, batch=1):
    """The official DDPM sampling of the oldcanvas scripts: x_T = q_sample(z_lr, 999, ε) on the un-respaced
    tables, then sample_canvas with time_replace; ``noise_like`` hands out the given per-step noise."""
    sqrt_ac, sqrt_one_minus_ac = register_official_schedule(model, ddpm, steps)
    x_t = model.q_sample_respace(x_start=z_lr, t=torch.tensor([999]), sqrt_alphas_cumprod=sqrt_ac,
                                 sqrt_one_minus_alphas_cumprod=sqrt_one_minus_ac, noise=eps)
    queue = iter(noises)
    noise_like, ddpm.noise_like = ddpm.noise_like, lambda shape, device, repeat=False: next(queue)
    try:
        samples, _ = model.sample_canvas(cond=context.repeat(batch, 1, 1), struct_cond=z_lr, batch_size=1,
                                         timesteps=steps, time_replace=steps, x_T=x_t, return_intermediates=True,
                                         tile_size=tile, tile_overlap=overlap, batch_size_sample=batch,
                                         verbose=False)
    finally:
        ddpm.noise_like = noise_like
    return samples


@pytest.fixture(scope="module", params=["eps", "v"])
def tiny(request, tmp_path_factory):
    """Official model, its file and the pack loaded from that file, for eps and v (768v) parameterisation."""
    model, ddpm = official_model(request.param)
    path = write_official_file(model, tmp_path_factory.mktemp("stablesr") / f"official_{request.param}.ckpt")
    z_lr = seeded((1, 4, 16, 16), 3)
    pack = Pack(comfy_unet_from_file(path, request.param == "v"), path, z_lr)
    return types.SimpleNamespace(model=model, ddpm=ddpm, pack=pack, z_lr=z_lr, name=request.param,
                                 context=seeded((1, 5, 1024), 4))


@pytest.mark.parametrize("tiny", ["eps"], indirect=True)
def test_space_timesteps_equal_the_official_ones(tiny):
    for steps in range(2, 1001):
        assert respaced_timesteps(steps) == sorted(tiny.ddpm.space_timesteps(1000, [steps])), steps


@pytest.mark.parametrize("tiny", ["eps"], indirect=True)  # the same encoder weights in both files
@pytest.mark.parametrize("t", [999, 500, 1])
def test_encoder_features_equal_the_official_ones(tiny, t):
    z_lr = seeded((2, 4, 16, 24), 5)  # a batch of two non-square LR latents
    timesteps = torch.tensor([t, t])
    with torch.no_grad():
        official = tiny.model.structcond_stage_model(z_lr, timesteps)
        ours = tiny.pack.sr.net.encoder(z_lr, timesteps.float())
    assert [str(w) for (h, w) in ours] == list(official)
    for (h, w), feature in ours.items():
        compare(f"{tiny.name} encoder t={t} {h}x{w}", feature, official[str(w)])


@pytest.mark.parametrize("t", [999, 500, 1])
def test_patched_unet_equals_the_official_unet(tiny, t):
    """UNetModelDualcondV2 with the encoder's features against ComfyUI's SD 2.x UNet with StableSR applied, and
    the x0 the official DDPM derives from it against ComfyUI's denoised."""
    x = seeded((1, 4, 16, 16), 6)
    x_in, timesteps, out, denoised = tiny.pack.unet(x, t, tiny.context)
    assert timesteps.tolist() == [t]
    assert_close_relative(x_in, x, 1e-6)  # scaled by √(1 + σ²) here and back by ComfyUI's c_in: float32 rounding
    tiny.model.register_schedule(beta_schedule="linear", timesteps=1000, linear_start=0.00085, linear_end=0.012)
    ts = torch.tensor([t])
    with torch.no_grad():
        features = tiny.model.structcond_stage_model(tiny.z_lr, ts)
        official = tiny.model.apply_model(x, ts, tiny.context, features)
    x0 = (tiny.model.predict_start_from_noise(x, ts, official) if tiny.name == "eps"
          else tiny.model.predict_start_from_z_and_v(x, official, ts))
    compare(f"{tiny.name} UNet t={t}", out, official)
    compare(f"{tiny.name} x0 t={t}", denoised, x0)


@pytest.mark.parametrize("steps", [4, 20])
def test_fixed_noise_ddpm_run_equals_the_official_one(tiny, steps):
    eps = seeded((1, 4, 16, 16), 7)
    noises = [seeded((1, 4, 16, 16), 100 + i) for i in range(steps)]
    with torch.no_grad():
        official = official_ddpm(tiny.model, tiny.ddpm, tiny.z_lr, eps, noises, steps, tiny.context, tile=16)
    ours, timesteps = tiny.pack.ddpm(tiny.z_lr, eps, noises, steps, tiny.context)
    assert timesteps == tiny.model.ori_timesteps[::-1]
    compare(f"{tiny.name} DDPM {steps} steps", ours, official)


@pytest.mark.parametrize("steps", [4])
def test_tiled_canvas_equals_the_official_one(tiny, steps):
    """sample_canvas on a 24x40 latent in 16-pixel tiles overlapping by 8 (4 x 2 tiles, the last column snapped,
    two tiles per batch) against tiled aggregation with the official Gaussian weights."""
    z_lr, eps = seeded((1, 4, 24, 40), 8), seeded((1, 4, 24, 40), 9)
    noises = [seeded((1, 4, 24, 40), 200 + i) for i in range(steps)]
    with torch.no_grad():
        official = official_ddpm(tiny.model, tiny.ddpm, z_lr, eps, noises, steps, tiny.context, tile=16, overlap=8,
                                 batch=2)
    ours, timesteps = tiny.pack.ddpm(z_lr, eps, noises, steps, tiny.context, tiles=(16, 8, 2))
    assert timesteps == tiny.model.ori_timesteps[::-1]
    compare(f"{tiny.name} tiled DDPM {steps} steps", ours, official)


def test_full_size_official_file_loads_whole_and_runs_like_the_official_code(tmp_path, caplog):
    """The official 512 config at full size: its module's SR tensors are those of tests/data/stablesr-layout.json;
    written as an fp16 checkpoint, ComfyUI's checkpoint loader takes every SD 2.1 UNet tensor from it (an SD 2.x
    eps MODEL, nothing missing) and the pack's loader every encoder and SPADE tensor; one 64x64 call of the
    encoder and the patched UNet then agrees with the official modules."""
    model, _ = official_model("eps", FULL_UNET, FULL_ENCODER)
    with open(LAYOUT) as f:
        layout = json.load(f)["stablesr_ckpt"]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert {k: v for k, v in shapes.items() if ".spade." in k} == layout["unet_spade_only"]
    assert {k: v for k, v in shapes.items() if k.startswith("structcond_stage_model.")} == layout[
        "structcond_stage_model"]
    unet_keys = {k for k in shapes if k.startswith("model.diffusion_model.") and ".spade." not in k}
    assert len(unet_keys) == layout["unet_base_count"]
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the values the fp16 file holds
    path = write_official_file(model, tmp_path / "stablesr_full.ckpt", torch.float16)
    with caplog.at_level(logging.WARNING):
        comfy_model = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]
    assert not [r for r in caplog.records if "unet missing" in r.getMessage()]
    assert type(comfy_model.model.model_config) is comfy.supported_models.SD20
    assert comfy_model.model.model_type.name == "EPS"
    assert {f"model.diffusion_model.{k}" for k in comfy_model.model.diffusion_model.state_dict()} == unet_keys
    z_lr, x, context = seeded((1, 4, 64, 64), 3), seeded((1, 4, 64, 64), 6), seeded((1, 77, 1024), 4)
    pack = Pack(comfy_model, path, z_lr)
    t = 999
    x_in, timesteps, out, denoised = pack.unet(x, t, context)
    assert timesteps.tolist() == [t]
    assert_close_relative(x_in, x, 1e-6)  # scaled by √(1 + σ²) here and back by ComfyUI's c_in: float32 rounding
    model.register_schedule(beta_schedule="linear", timesteps=1000, linear_start=0.00085, linear_end=0.012)
    ts = torch.tensor([t])
    with torch.no_grad():
        features = model.structcond_stage_model(z_lr, ts)
        ours = pack.sr.net.encoder(z_lr, ts.float())
        for (h, w), feature in ours.items():
            compare(f"full encoder t={t} {h}x{w}", feature, features[str(w)])
        official = model.apply_model(x_in, ts, context, features)
    compare(f"full UNet t={t}", out, official)
    compare(f"full x0 t={t}", denoised, model.predict_start_from_noise(x_in, ts, official))
