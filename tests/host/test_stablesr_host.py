"""Tier 2: StableSR on ComfyUI's own SD 2.x UNet (tiny SD 2.1 layout, seeded weights): the patched UNet equals a
walk of the same modules in StableSR's order, the encoder sees the LR latent and the call's timestep, and wrong
files and models fail clearly."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.patcher_extension  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock  # noqa: E402
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding  # noqa: E402

from supir_restore.supir.host.stablesr import (SPADESlot, StableSRMismatchError, apply_stablesr,  # noqa: E402
                                               load_stablesr)
from supir_restore.supir.stablesr.checkpoint import StableSRCheckpointError, sd_resblock_widths  # noqa: E402
from supir_restore.supir.stablesr.checkpoint import SPADELayers  # noqa: E402
from supir_restore.supir.stablesr.encoder import EncoderConfig, TimeAwareEncoder  # noqa: E402
from tiny_models import TINY_SD21_UNET_CONFIG, seeded_init_, tiny_sd21, tiny_sdxl  # noqa: E402

ENCODER = EncoderConfig(model_channels=32, feature_channels=64)


def stablesr_file(path, seed=5) -> str:
    """A StableSR checkpoint in the official layout for the tiny SD 2.1 UNet: its UNet tensors, a SPADE layer for
    each of its 22 ResBlocks and a time-aware encoder, all seeded."""
    unet = tiny_sd21(seed=0)
    widths = sd_resblock_widths(32, tuple(TINY_SD21_UNET_CONFIG["channel_mult"]), 2)
    spade = seeded_init_(SPADELayers(widths, ENCODER.feature_channels, hidden=32), seed)
    encoder = seeded_init_(TimeAwareEncoder(ENCODER), seed + 1)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.model.diffusion_model.state_dict().items()}
    sd.update({f"model.diffusion_model.{k}": v for k, v in spade.state_dict().items()})
    sd.update({f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()})
    torch.save({"state_dict": sd}, path)
    return str(path)


@pytest.fixture(scope="module")
def stablesr(tmp_path_factory):
    return load_stablesr(stablesr_file(tmp_path_factory.mktemp("stablesr") / "tiny_stablesr.ckpt"), "fp32")


def lr_latent(seed=3, size=(8, 16)):
    return torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(seed))


def stablesr_reference(unet, sr, x, t, context, lr):
    """StableSR's UNet forward (ResBlockDual: h = SPADE(out_layers(in_layers(x) + emb), f); skip(x) + h), walking
    the ComfyUI UNet's modules and the loaded SPADE layers and encoder."""
    features = sr.net.encoder(lr, t)
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels).to(x.dtype))

    def run(block, path, h):
        for i, layer in enumerate(block):
            if isinstance(layer, ResBlock):
                out_layers = torch.nn.Sequential(*(m for m in layer.out_layers if not isinstance(m, SPADESlot)))
                r = out_layers(layer.in_layers(h) + layer.emb_layers(emb)[:, :, None, None])
                r = sr.net.spade.layer(f"{path}.{i}")(r, features[tuple(r.shape[-2:])])
                h = layer.skip_connection(h) + r
            elif hasattr(layer, "transformer_blocks"):
                h = layer(h, context=context)
            else:
                h = layer(h)
        return h
    hs, h = [], x
    for i, block in enumerate(unet.input_blocks):
        h = run(block, f"input_blocks.{i}", h)
        hs.append(h)
    h = run(unet.middle_block, "middle_block", h)
    for i, block in enumerate(unet.output_blocks):
        h = run(block, f"output_blocks.{i}", torch.cat([h, hs.pop()], dim=1))
    return unet.out(h)


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
    torch.testing.assert_close(ct, model.get_model_object("model_sampling").timestep(sigma).float())  # 0..999
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (plain_out(model, x, sigma, context) - out).abs().max() > 1e-3  # SPADE changed the UNet


def plain_out(model, x, sigma, context):
    comfy.model_management.load_models_gpu([model])
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=context)


def patched_out(patched, x, sigma, context):
    """One UNet call of a patched MODEL as a sampler makes it: loaded (object patches in place), with its
    wrappers and transformer options."""
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        return patched.model.apply_model(x, sigma, c_crossattn=context,
                                         transformer_options={**patched.model_options["transformer_options"],
                                                              "wrappers": patched.wrappers})


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
