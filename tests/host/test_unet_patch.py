"""Tier 2: SUPIR on ComfyUI's own SDXL UNet (tiny SDXL layout, seeded weights)."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed  # noqa: E402
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from supir_restore.supir.host.unet_patch import SUPIR_PATCH_KEY, CrossAttnSlot, SUPIRMismatchError, apply_supir  # noqa: E402
from tiny_models import fake_conditioning, tiny_sd15  # noqa: E402

SIGMA = 7.3


def hint_latent(seed=7, batch=1, size=8):
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def record_calls(model):
    """Adds a recorder around the diffusion model that keeps every call's inputs and output."""
    calls = []

    def recorder(executor, x, timesteps, context, y, control, transformer_options, **kw):
        out = executor(x, timesteps, context, y, control, transformer_options, **kw)
        calls.append(dict(x=x.clone(), t=timesteps.clone(), context=context.clone(), y=y.clone(), out=out.clone()))
        return out
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", recorder)
    return calls


def one_step(model, cfg=3.0, sigma=SIGMA, batch=1, seed=11):
    noise = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.tensor([sigma, 0.0])
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.ksampler("euler"), sigmas,
                                      fake_conditioning(batch, seed=1), fake_conditioning(batch, seed=2),
                                      torch.zeros(batch, 4, 8, 8), disable_pbar=True, seed=seed)


def supir_reference(unet, control, x, t, context, y, hint, scale):
    """SUPIR's LightGLVUNet forward, walking the ComfyUI UNet's modules and the SUPIR modules in SUPIR's order."""
    feats = control.control_model(x, hint, t, context, y)
    pm = control.project_modules
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels).to(x.dtype)) + unet.label_emb(y)
    hs, h = [], x
    for module in unet.input_blocks:
        h = module(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    a, c = len(pm) - 1, len(feats) - 1
    h = pm[a](feats[c], h, None, scale)
    a, c = a - 1, c - 1
    for module in unet.output_blocks:
        module = [layer for layer in module if not isinstance(layer, CrossAttnSlot)]  # the UNet's own layers
        skip = hs.pop()
        h = pm[a](feats[c], skip, h, scale)
        a -= 1
        if len(module) == 3:
            h = module[0](h, emb)
            h = module[1](h, context)
            h = pm[a](feats[c], h, scale)
            a -= 1
            h = module[2](h, output_shape=hs[-1].shape)
        else:
            h = forward_timestep_embed(module, h, emb, context)
        c -= 1
    return unet.out(h)


@pytest.mark.parametrize("scale_start,scale_end", [(1.0, 1.0), (1.0, 0.4)])
def test_patched_unet_equals_supir_reference(tiny_model, tiny_supir, scale_start, scale_end):
    hint = hint_latent()
    patched = apply_supir(tiny_model, tiny_supir, hint, scale_start, scale_end)
    calls = record_calls(patched)
    one_step(patched, cfg=3.0)
    assert len(calls) == 1 and calls[0]["x"].shape[0] == 2  # cond and uncond in one batch
    c = calls[0]
    scaled_hint = (hint * 0.13025).repeat(2, 1, 1, 1)
    scale = scale_end + (scale_start - scale_end) * SIGMA / 14.6146
    with torch.no_grad():
        ref = supir_reference(tiny_model.model.diffusion_model, tiny_supir.control, c["x"], c["t"], c["context"],
                              c["y"], scaled_hint, scale)
    # the same float32 UNet and control as the reference, with ComfyUI's attention and batched cond/uncond
    assert_close_relative(c["out"], ref, 1e-4)
    plain_model = tiny_model.clone()
    plain = record_calls(plain_model)
    one_step(plain_model)
    assert relative_error(c["out"], plain[0]["out"]) > 1e-2  # the control changes the prediction


def test_unpatched_clone_after_supir_is_plain_sdxl(tiny_model, tiny_supir):
    before = one_step(tiny_model.clone())
    one_step(apply_supir(tiny_model, tiny_supir, hint_latent()))
    assert torch.equal(one_step(tiny_model.clone()), before)


def test_control_scale_zero_is_plain_sdxl(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent(), 0.0, 0.0)
    assert torch.equal(one_step(patched), one_step(tiny_model))
    assert not torch.equal(one_step(apply_supir(tiny_model, tiny_supir, hint_latent(), 1.0, 1.0)), one_step(tiny_model))


def test_stock_ksampler_two_steps(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent(batch=2), 1.0, 0.9)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = comfy.sample.sample(patched, noise, 2, 4.0, "euler", "normal", fake_conditioning(2, 1),
                              fake_conditioning(2, 2), torch.zeros(2, 4, 8, 8), disable_pbar=True, seed=3)
    plain = comfy.sample.sample(tiny_model, noise, 2, 4.0, "euler", "normal", fake_conditioning(2, 1),
                                fake_conditioning(2, 2), torch.zeros(2, 4, 8, 8), disable_pbar=True, seed=3)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
    assert relative_error(out, plain) > 1e-3


def test_composes_with_other_patches_and_clones_share_weights(tiny_model, tiny_supir):
    hint = hint_latent()
    patched = apply_supir(tiny_model, tiny_supir, hint)
    reference = one_step(patched)
    seen = []

    def other_wrapper(executor, *args, **kw):
        seen.append("wrapper")
        return executor(*args, **kw)

    def other_block_patch(h, skip, transformer_options):
        seen.append(transformer_options["block"])
        return h, skip

    stacked = patched.clone()
    stacked.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "other", other_wrapper)
    stacked.set_model_output_block_patch(other_block_patch)
    assert torch.equal(one_step(stacked), reference)
    assert seen.count("wrapper") == 1 and ("output", 8) in seen

    patch_objects = [p.__self__ for p in stacked.model_options["transformer_options"]["patches"]["output_block_patch"]
                     if hasattr(p, "__self__")]
    original = [p.__self__ for p in patched.model_options["transformer_options"]["patches"]["output_block_patch"]]
    assert patch_objects[0] is original[0]  # the deep copy in clone() shares the SUPIR state
    first = next(tiny_supir.control.parameters())
    assert next(stacked.additional_models[SUPIR_PATCH_KEY][0].model.parameters()).data_ptr() == first.data_ptr()


def test_trunk_loads_and_offloads_with_the_unet(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent())
    mm.unload_all_models()
    one_step(patched)  # sampling loads the MODEL with its additional models
    loaded = [m.model for m in mm.loaded_models()]
    assert tiny_supir.control in loaded and tiny_model.model in loaded
    mm.unload_all_models()
    assert tiny_supir.control not in [m.model for m in mm.loaded_models()]


def test_low_vram_partial_load_and_storage_dtypes(tiny_model, tiny_supir_file):
    hint = hint_latent()
    full = one_step(apply_supir(tiny_model, load_supir(tiny_supir_file, "fp32"), hint))
    low = load_supir(tiny_supir_file, "fp32")
    mm.unload_all_models()
    low.patcher.load(low.patcher.load_device, lowvram_model_memory=1, force_patch_weights=False, full_load=False)
    assert any(getattr(m, "comfy_cast_weights", False) for m in low.control.modules())
    patched = apply_supir(tiny_model, low, hint)
    assert_close_relative(one_step(patched), full, 1e-6)  # the same fp32 weights, cast on the fly
    low.patcher.detach()
    # stored weights round to 2^-11 (fp16), 2^-8 (bf16) and 2^-4 (fp8 e4m3) relative; the bounds leave room for
    # that rounding summed over the control trunk's layers, far below what a wrong weight would give
    for dtype, storage, tol in (("fp16", torch.float16, 0.01), ("bf16", torch.bfloat16, 0.05),
                                ("fp8_e4m3fn", torch.float8_e4m3fn, 0.25)):
        supir = load_supir(tiny_supir_file, dtype)
        assert next(supir.control.parameters()).dtype == storage
        out = one_step(apply_supir(tiny_model, supir, hint))
        assert torch.isfinite(out).all()
        assert relative_error(out, full) < tol, dtype


def test_interrupt_stops_sampling(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent())
    calls = record_calls(patched)

    def interrupt_after_first_step(step, x0, x, total):
        if step == 0:
            mm.interrupt_current_processing(True)

    noise = torch.randn(1, 4, 8, 8)
    with pytest.raises(mm.InterruptProcessingException):
        comfy.sample.sample(patched, noise, 6, 1.0, "euler", "normal", fake_conditioning(), fake_conditioning(),
                            torch.zeros(1, 4, 8, 8), callback=interrupt_after_first_step, disable_pbar=True, seed=1)
    assert 1 <= len(calls) < 6
    assert not mm.processing_interrupted()


def test_sd15_model_is_a_clear_error(tiny_supir):
    with pytest.raises(SUPIRMismatchError, match="SUPIR needs an SDXL model"):
        apply_supir(tiny_sd15(), tiny_supir, hint_latent())


def test_hint_size_mismatch_is_a_clear_error(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent(size=16))
    with pytest.raises(SUPIRMismatchError, match="sample a latent of the LQ image's size"):
        one_step(patched)


def test_applying_twice_is_refused(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, hint_latent())
    with pytest.raises(SUPIRMismatchError, match="already has SUPIR applied"):
        apply_supir(patched, tiny_supir, hint_latent())


def core_supir_patch():
    """ComfyUI's own SUPIR patch object where this ComfyUI has one (newer releases), else an object of a class in
    the same module that registers the same three UNet patches as core's ``SUPIRPatch.register``: a middle-block
    patch, an output-block patch that hands on ``skip=None``, and an Upsample handler."""
    try:
        from comfy.ldm.supir.supir_patch import SUPIRPatch
        return SUPIRPatch.__new__(SUPIRPatch)
    except ImportError:
        pass
    import sys
    import types
    from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample

    class SUPIRPatch:
        def middle_after(self, kwargs):
            return {"h": kwargs["h"]}

        def output_block(self, h, hsp, transformer_options):
            return h, None

        def pre_upsample(self, layer, x, emb, context, transformer_options, output_shape, *args, **kwargs):
            return layer(x, output_shape=output_shape)

        def register(self, model_patcher):
            model_patcher.set_model_patch(self.middle_after, "middle_block_after_patch")
            model_patcher.set_model_output_block_patch(self.output_block)
            model_patcher.set_model_patch((Upsample, self.pre_upsample), "forward_timestep_embed_patch")
    module = types.ModuleType("comfy.ldm.supir.supir_patch")
    SUPIRPatch.__module__ = module.__name__
    module.SUPIRPatch = SUPIRPatch
    sys.modules[module.__name__] = module
    return SUPIRPatch()


def test_core_supir_patch_and_ours_on_one_model_is_a_clear_error(tiny_model, tiny_supir):
    core_first = tiny_model.clone()
    core_supir_patch().register(core_first)
    with pytest.raises(SUPIRMismatchError, match="ComfyUI's own SUPIR patch .*Use one of the two"):
        apply_supir(core_first, tiny_supir, hint_latent())

    ours_first = apply_supir(tiny_model, tiny_supir, hint_latent()).clone()
    core_supir_patch().register(ours_first)
    with pytest.raises(SUPIRMismatchError, match="ComfyUI's own SUPIR patch .*Use one of the two"):
        one_step(ours_first)
