"""Tier 2: LoRA region blend on ComfyUI (tiny SDXL + SUPIR): the exact masked mix of the two stacks' predictions at
one model call (plain, with SUPIR Apply Control and tiled aggregation, with the conds' own hook LoRAs), full restores with
SUPIR Restore and the stock KSampler, in-place weight patching without a second UNet, and the node."""
import gc
import warnings

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

import comfy.hooks  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from supir_restore.nodes.lora_nodes import SUPIRLoraRegionBlend  # noqa: E402
from supir_restore.supir.host.lora_stack import apply_lora_stack  # noqa: E402
from supir_restore.supir.host.lora_region import apply_region_blend  # noqa: E402
from supir_restore.supir.image.region_mask import RegionMaskError, latent_mask  # noqa: E402
from supir_restore.supir.host.restore import supir_sigmas  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from test_lora_host import TARGETS, file_for, modules_for, patched_weights, run_node  # noqa: E402,F401
from test_restore import run_restore  # noqa: E402
from tiny_models import fake_conditioning  # noqa: E402

CFG = 3.0


def lora(model, seed: int) -> dict[str, torch.Tensor]:
    """A random kohya LoRA on the TARGETS weights of ``model``."""
    return file_for(modules_for(model, seed=seed), "kohya")


def region_mask(h_px: int, w_px: int, seed: int = 4) -> torch.Tensor:
    """[1, H, W]: a hard left part (1), a hard right part (0) and random soft values between."""
    mask = torch.rand(1, h_px, w_px, generator=torch.Generator().manual_seed(seed))
    mask[..., : w_px // 3] = 1.0
    mask[..., -(w_px // 3):] = 0.0
    return mask


def first_prediction(model, noise: torch.Tensor, positive=None) -> torch.Tensor:
    """The x0 prediction (after CFG) of the first model call of a sampling run from ``noise``, at the second sigma
    of a 10-step SUPIR schedule."""
    seen = []

    def record(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        seen.append(model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args))
        return x
    sigmas = supir_sigmas(model, 10)[1:]
    with torch.no_grad():
        comfy.sample.sample_custom(model, noise, CFG, comfy.samplers.KSAMPLER(record), sigmas,
                                   positive or fake_conditioning(noise.shape[0], seed=1),
                                   fake_conditioning(noise.shape[0], seed=2), torch.zeros_like(noise),
                                   disable_pbar=True, seed=0)
    return seen[0]


def assert_masked_mix(region, inside, outside, weights):
    """``region`` equals weights·inside + (1 − weights)·outside, and the two stacks differ where it matters."""
    assert relative_error(inside, outside) > 0.1
    # each stack's weights are patched in float32 for its pass, the mix is one lerp: rounding only
    assert_close_relative(region, weights * inside + (1 - weights) * outside, 1e-4)
    assert relative_error(region, inside) > 0.01 and relative_error(region, outside) > 0.01


def test_one_call_is_the_masked_mix_of_the_two_stacks(tiny_model):
    a, b = lora(tiny_model, 1), lora(tiny_model, 2)
    mask = region_mask(64, 96)
    region, report = apply_region_blend(tiny_model, mask, [("a", a, 1.0)], [("b", b, 0.8)])
    noise = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(11))
    pred = first_prediction(region, noise)
    pred_in = first_prediction(apply_lora_stack(tiny_model, None, [("a", a, 1.0)])[0], noise)
    pred_out = first_prediction(apply_lora_stack(tiny_model, None, [("b", b, 0.8)])[0], noise)
    assert_masked_mix(pred, pred_in, pred_out, latent_mask(mask, 8, 12, 1))
    lines = report.splitlines()
    assert len(lines) == 4 and lines[0] == "inside the mask:" and lines[2] == "outside the mask:"
    assert lines[1].startswith("a (strength 1): 9 of 9 tensors applied")
    assert lines[3].startswith("b (strength 0.8): 9 of 9 tensors applied")


def test_masked_mix_with_apply_supir_and_tiled_aggregation(tiny_model, tiny_supir):
    """Region blend after SUPIR Apply Control and tiled aggregation (two overlapping tiles): each pass runs the SUPIR trunk
    and the UNet tile by tile, and the blend is the masked mix of those full-image predictions."""
    a, b = lora(tiny_model, 1), lora(tiny_model, 2)
    mask = region_mask(64, 96, seed=5)
    hint = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(7))

    def restoring(model):
        return apply_tiled_aggregation(apply_supir(model, tiny_supir, hint), 8, 4)
    region = apply_region_blend(restoring(tiny_model), mask, [("a", a, 1.0)], [("b", b, 0.8)])[0]
    noise = torch.randn(hint.shape, generator=torch.Generator().manual_seed(12))
    pred = first_prediction(region, noise)
    pred_in = first_prediction(restoring(apply_lora_stack(tiny_model, None, [("a", a, 1.0)])[0]), noise)
    pred_out = first_prediction(restoring(apply_lora_stack(tiny_model, None, [("b", b, 0.8)])[0]), noise)
    assert_masked_mix(pred, pred_in, pred_out, latent_mask(mask, 8, 12, 1))


def test_masked_mix_keeps_the_conds_own_hook_loras(tiny_model):
    """A hook LoRA set on the positive prompt (ComfyUI's hooks nodes) stays on it in both passes; the two conds'
    hook groups would make ComfyUI cache patched weights per group, which the blend turns off. The outside stack
    is empty: the model as it is."""
    a, c = lora(tiny_model, 1), lora(tiny_model, 3)
    positive = comfy.hooks.set_hooks_for_conditioning(fake_conditioning(seed=1),
                                                      comfy.hooks.create_hook_lora(c, 0.6, 0.0))
    mask = region_mask(64, 64)
    region, report = apply_region_blend(tiny_model, mask, [("a", a, 1.0)], [])
    cached = []
    region.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_cache_probe",
                                lambda executor, *args, **kw: cached.append(len(region.cached_hook_patches)) or
                                executor(*args, **kw))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(13))
    pred = first_prediction(region, noise, positive)
    pred_in = first_prediction(apply_lora_stack(tiny_model, None, [("a", a, 1.0)])[0], noise, positive)
    pred_out = first_prediction(tiny_model, noise, positive)
    without_hook = first_prediction(tiny_model, noise)
    assert relative_error(pred_out, without_hook) > 0.01  # the cond's hook LoRA changes the prediction
    assert_masked_mix(pred, pred_in, pred_out, latent_mask(mask, 8, 8, 1))
    assert len(cached) == 4 and not any(cached)  # 2 passes x 2 hook groups (positive, negative)
    assert report.splitlines()[2:] == ["outside the mask:", "no LoRA"]


def test_full_supir_restore_with_our_sampler(tiny_model, tiny_supir):
    a, b = lora(tiny_model, 1), lora(tiny_model, 2)
    hint = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    def restored(model):
        return run_restore(model, tiny_supir, hint, seed=3, preset="Custom", steps=2)
    only_a = restored(apply_lora_stack(tiny_model, None, [("a", a, 1.0)])[0])
    inside_everywhere = restored(apply_region_blend(tiny_model, torch.ones(64, 64), [("a", a, 1.0)],
                                                    [("b", b, 0.8)])[0])
    assert_close_relative(inside_everywhere, only_a, 1e-5)  # the same weights, patched per pass: rounding only


def test_stock_ksampler_with_supir(tiny_model, tiny_supir):
    a, b = lora(tiny_model, 1), lora(tiny_model, 2)
    hint = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(7))

    def sampled(model, mask=None):
        model = apply_supir(model, tiny_supir, hint)
        if mask is not None:
            model = apply_region_blend(model, mask, [("a", a, 1.0)], [("b", b, 0.8)])[0]
        noise = torch.randn(hint.shape, generator=torch.Generator().manual_seed(3))
        return comfy.sample.sample(model, noise, 2, CFG, "euler", "karras", fake_conditioning(seed=1),
                                   fake_conditioning(seed=2), torch.zeros_like(hint), disable_pbar=True, seed=3)
    only_b = sampled(apply_lora_stack(tiny_model, None, [("b", b, 0.8)])[0])
    outside_everywhere = sampled(tiny_model, torch.zeros(1, 64, 96))
    half = sampled(tiny_model, region_mask(64, 96))
    assert_close_relative(outside_everywhere, only_b, 1e-5)  # as above
    assert torch.isfinite(half).all() and relative_error(half, only_b) > 1e-3


def live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the garbage collector can reach."""
    storages = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_stacks_are_patched_in_place_without_a_second_unet(tiny_model):
    a, b = lora(tiny_model, 1), lora(tiny_model, 2)
    unet = tiny_model.model.diffusion_model
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    pointers = {k: v.data_ptr() for k, v in unet.state_dict().items()}
    unet_bytes = sum(v.nbytes for v in base.values())
    with_a = patched_weights(apply_lora_stack(tiny_model, None, [("a", a, 1.0)])[0])
    with_b = patched_weights(apply_lora_stack(tiny_model, None, [("b", b, 0.8)])[0])
    region = apply_region_blend(tiny_model, region_mask(64, 64), [("a", a, 1.0)], [("b", b, 0.8)])[0]
    assert region.model is tiny_model.model
    passes = []

    def probe(executor, *args, **kw):
        weights = unet.state_dict()
        passes.append(dict(targets={p: weights[p + ".weight"].clone() for p in TARGETS},
                           same_storage=all(weights[k].data_ptr() == ptr for k, ptr in pointers.items()),
                           cached=len(region.cached_hook_patches), live=live_tensor_bytes()))
        return executor(*args, **kw)
    region.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_weight_probe", probe)
    gc.collect()
    before = live_tensor_bytes()
    first_prediction(region, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(14)))
    assert len(passes) == 2
    for seen, expected in zip(passes, (with_a, with_b)):
        for path in TARGETS:
            assert_close_relative(seen["targets"][path], expected[path + ".weight"], 1e-6)  # float32 rounding
        assert seen["same_storage"] and seen["cached"] == 0
        assert seen["live"] - before < unet_bytes / 4, (seen["live"] - before, unet_bytes)
    after = unet.state_dict()
    assert all(torch.equal(after[k], base[k]) for k in base)


def test_node_reads_both_stacks_and_reports(tiny_model, lora_folder):
    safetensors.torch.save_file(lora(tiny_model, 1), str(lora_folder / "loras" / "a.safetensors"))
    safetensors.torch.save_file(lora(tiny_model, 2), str(lora_folder / "loras" / "b.safetensors"))
    empty = {f"{kind}_{where}_{i}": value for where in ("inside", "outside") for i in range(1, 5)
             for kind, value in (("lora", "None"), ("strength", 1.0))}
    slots = {**empty, "lora_inside_2": "a.safetensors", "strength_inside_2": 0.5, "lora_outside_1": "b.safetensors",
             "strength_outside_1": -1.0, "lora_outside_3": "a.safetensors", "strength_outside_3": 0.0}
    model, report = run_node(SUPIRLoraRegionBlend, model=tiny_model, mask=torch.ones(1, 64, 64), feather=16,
                             **slots).result
    lines = report.splitlines()
    assert len(lines) == 5 and lines[0] == "inside the mask:" and lines[2] == "outside the mask:"
    assert lines[1].startswith("a.safetensors (strength 0.5): 9 of 9 tensors applied")
    assert lines[3].startswith("b.safetensors (strength -1): 9 of 9 tensors applied")
    assert lines[4] == "a.safetensors: skipped (strength 0)"
    patch = model.wrappers[comfy.patcher_extension.WrappersMP.CALC_COND_BATCH]["supir_lora_region"][0].__self__
    assert patch.feather == 2.0  # 16 image pixels = 2 latent pixels
    assert len(model.hook_patches) == 2 and not tiny_model.hook_patches
    with pytest.raises(RegionMaskError, match="no LoRA with a non-zero strength"):
        run_node(SUPIRLoraRegionBlend, model=tiny_model, mask=torch.ones(1, 64, 64), feather=0, **empty)


def test_a_mask_of_another_aspect_fails_while_sampling(tiny_model):
    region = apply_region_blend(tiny_model, torch.ones(1, 64, 32), [("a", lora(tiny_model, 1), 1.0)], [])[0]
    with pytest.raises(RegionMaskError, match="region mask is 32x64 px but the image being sampled is 64x64 px"):
        first_prediction(region, torch.randn(1, 4, 8, 8))
