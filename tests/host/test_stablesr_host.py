"""Tier 2: StableSR on ComfyUI's own SD 2.x UNet (tiny SD 2.1 layout, seeded weights): the patched UNet equals a
walk of the same modules in StableSR's order, the encoder sees the LR latent and the call's timestep, and wrong
files and models fail clearly."""
import os
import pickle

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from stablesr_helpers import lr_latent, patched_out, plain_out, stablesr_file, stablesr_reference  # noqa: E402
from supir_restore.supir.host.stablesr import StableSRMismatchError, apply_stablesr, load_stablesr  # noqa: E402
from supir_restore.supir.stablesr.checkpoint import StableSRCheckpointError  # noqa: E402
from supir_restore.supir.weights import CorruptWeightsError, UnsafeWeightsError  # noqa: E402
from tiny_models import tiny_sd15, tiny_sd21, tiny_sdxl  # noqa: E402


def test_patched_unet_equals_stablesr_reference(stablesr):
    model = tiny_sd21(seed=0)
    lr = lr_latent()
    patched = apply_stablesr(model, stablesr, lr)
    calls = []

    def recorder(executor, x, timesteps, context, y, control, transformer_options, **kw):
        out = executor(x, timesteps, context, y, control, transformer_options, **kw)
        calls.append((x.clone(), timesteps.clone(), context.clone(), out.clone()))
        return out
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", recorder)
    x = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([7.0, 7.0])
    context = torch.randn(2, 5, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        patched_out(patched, x, sigma, context)
        (cx, ct, cc, out), = calls
        lr_in = model.get_model_object("latent_format").process_in(lr).expand(2, -1, -1, -1)
        expected = stablesr_reference(patched.model.diffusion_model, stablesr, cx, ct, cc, lr_in)
    # the timesteps 0..999 the UNet was given: ComfyUI's own conversion, so equal
    torch.testing.assert_close(ct, model.get_model_object("model_sampling").timestep(sigma).float(), rtol=0, atol=0)
    assert_close_relative(out, expected, 1e-5)  # the same float32 UNet and SPADE maths, ComfyUI's attention
    assert relative_error(out, plain_out(model, x, sigma, context)) > 1e-3  # SPADE changed the UNet


def test_spade_without_modulation_leaves_the_stock_unet_with_only_its_norm(tmp_path):
    """With γ = β = 0 (mlp_gamma, mlp_beta zero) SPADE is out = norm(h) for any encoder features: the LR latent has
    no influence, and the UNet is the stock one with each ResBlock's residual branch passed through the layer's
    affine GroupNorm (StableSR's ``param_free_norm`` has trained weights, so it is not the identity)."""
    sd = torch.load(stablesr_file(tmp_path / "sr.ckpt"), weights_only=True)
    for key, value in sd["state_dict"].items():
        if ".spade.mlp_gamma." in key or ".spade.mlp_beta." in key:
            value.zero_()
    torch.save(sd, tmp_path / "flat.ckpt")
    flat = load_stablesr(str(tmp_path / "flat.ckpt"), "fp32")
    model = tiny_sd21(seed=0)
    x, sigma = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([7.0])
    context = torch.randn(1, 5, 1024, generator=torch.Generator().manual_seed(2))
    outs = [patched_out(apply_stablesr(model, flat, lr_latent(seed)), x, sigma, context) for seed in (3, 4)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    unet, t = model.model.diffusion_model, model.get_model_object("model_sampling").timestep(sigma).float()
    c_in = 1 / (sigma ** 2 + 1).sqrt()
    with torch.no_grad():
        comfy.model_management.load_models_gpu([model])
        walked = stablesr_reference(unet, flat, x * c_in, t, context, lr_latent(),
                                    modulate=lambda path, h: flat.net.spade.layer(path).param_free_norm(h))
    denoised = x - walked * sigma  # eps prediction -> x0, as ComfyUI
    assert_close_relative(outs[0], denoised, 1e-4)  # the same float32 UNet walked by hand; x0 = x - 7 eps: 7x its error
    assert relative_error(outs[0], plain_out(model, x, sigma, context)) > 1e-3


def test_wrong_models_and_files_fail_clearly(stablesr, tmp_path):
    with pytest.raises(StableSRMismatchError, match="made for Stable Diffusion 2.x .* context is 2048"):
        apply_stablesr(tiny_sdxl(seed=0), stablesr, lr_latent())
    patched = apply_stablesr(tiny_sd21(seed=0), stablesr, lr_latent())
    with pytest.raises(StableSRMismatchError, match="already has StableSR applied"):
        apply_stablesr(patched, stablesr, lr_latent())
    with pytest.raises(StableSRMismatchError, match="sample a latent of the upscaled LR image's size"):
        patched_out(patched, torch.zeros(1, 4, 8, 8), torch.tensor([3.0]), torch.zeros(1, 5, 1024))
    plain = tmp_path / "sd21.ckpt"
    torch.save({"state_dict": {f"model.diffusion_model.{k}": v for k, v in
                               tiny_sd21(seed=0).model.diffusion_model.state_dict().items()}}, plain)
    with pytest.raises(StableSRCheckpointError, match="sd21.ckpt: this is a Stable Diffusion checkpoint without"):
        load_stablesr(str(plain))
    with pytest.raises(StableSRMismatchError, match="context is 768 \\(SD 1.x"):
        apply_stablesr(tiny_sd15(seed=0), stablesr, lr_latent())


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo never run",))


def test_damaged_and_malicious_files_are_refused_by_name(tmp_path):
    with open(tmp_path / "stablesr_evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": {"structcond_stage_model.x": Exploit()}}, f)
    with pytest.raises(UnsafeWeightsError, match="stablesr_evil.ckpt"):
        load_stablesr(str(tmp_path / "stablesr_evil.ckpt"))
    good = open(stablesr_file(tmp_path / "stablesr_000117.ckpt"), "rb").read()
    with open(tmp_path / "stablesr_cut.ckpt", "wb") as f:
        f.write(good[:len(good) // 2])
    with pytest.raises(CorruptWeightsError, match="stablesr_cut.ckpt"):
        load_stablesr(str(tmp_path / "stablesr_cut.ckpt"))
