"""Tier 2: restoration sampling on ComfyUI (tiny SDXL + SUPIR): guidance patches with stock samplers,
SUPIR's samplers as SAMPLER objects, the all-in-one restore node, determinism and interrupt."""
import dataclasses

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from supir_restore.nodes.sampling_nodes import SUPIRRestore, SUPIRSamplerDPM, SUPIRSamplerEDM, SUPIRSigmas  # noqa: E402
from supir_restore.supir.host.restore import apply_guidance, restore_latent, supir_sigmas  # noqa: E402
from supir_restore.supir.sampling.samplers import RESTORE_PRESETS, RestoreSettings, StartMode, restoration_weight  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from tiny_models import fake_conditioning  # noqa: E402


def latent(seed, batch=1):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def first_denoised(model, positive, negative, cfg, sigmas, seed=1):
    """x0 estimate of the first model call of a sampling run with ``sigmas`` (recorded by a one-step sampler)."""
    seen = []

    def record(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        seen.append((x.clone(), model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)))
        return x
    comfy.sample.sample_custom(model, latent(seed), cfg, comfy.samplers.KSAMPLER(record), sigmas, positive, negative,
                               torch.zeros(1, 4, 8, 8), disable_pbar=True, seed=seed)
    return seen[0]


def test_restoration_guidance_with_a_stock_schedule(tiny_model):
    target = latent(9)
    sigmas = supir_sigmas(tiny_model, 10)[1:]  # a stock run starting at the second step
    pos, neg = fake_conditioning(seed=1), fake_conditioning(seed=2)
    x, plain = first_denoised(apply_guidance(tiny_model, 3.0, 3.0), pos, neg, 3.0, sigmas)
    _, guided = first_denoised(apply_guidance(tiny_model, 3.0, 3.0, 4.0, target), pos, neg, 3.0, sigmas)
    sigma_max = float(tiny_model.get_model_object("model_sampling").sigma_max)
    w = restoration_weight(float(sigmas[0]), sigma_max, 4.0)
    assert 0.01 < w < 0.9
    center = target * 0.13025
    expected = plain - (plain - center) * w
    assert_close_relative(guided, expected, 1e-5)  # one float32 pull in another order than ours
    late = sigmas[-2:]  # the last step: sigma_next = 0 <= s_tmin, so no pull
    _, plain_late = first_denoised(apply_guidance(tiny_model, 3.0, 3.0), pos, neg, 3.0, late)
    _, guided_late = first_denoised(apply_guidance(tiny_model, 3.0, 3.0, 4.0, target), pos, neg, 3.0, late)
    torch.testing.assert_close(guided_late, plain_late, rtol=0, atol=0)  # a zero pull subtracts exactly 0


def test_cfg_moves_linearly_with_sigma(tiny_model):
    pos, neg = fake_conditioning(seed=1), fake_conditioning(seed=2)
    for sigmas in (supir_sigmas(tiny_model, 10), supir_sigmas(tiny_model, 10)[5:]):
        _, cond = first_denoised(tiny_model, pos, pos, 1.0, sigmas)
        _, uncond = first_denoised(tiny_model, neg, neg, 1.0, sigmas)
        _, ramped = first_denoised(apply_guidance(tiny_model, 2.0, 6.0), pos, neg, 1.0, sigmas)
        scale = 6.0 + (2.0 - 6.0) * float(sigmas[0]) / float(tiny_model.get_model_object("model_sampling").sigma_max)
        # the same CFG from the same two predictions (batched, so rounded differently), scaled by up to 6
        assert_close_relative(ramped, uncond + (cond - uncond) * scale, 1e-4)


def test_restore_guidance_without_target_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="needs a restoration_target"):
        apply_guidance(tiny_model, 4.0, 7.5, 4.0, None)


@pytest.mark.parametrize("sampler_node,schedule", [(SUPIRSamplerEDM, "supir_discrete"), (SUPIRSamplerDPM, "supir_karras")])
def test_samplers_in_sampler_custom_advanced(tiny_model, tiny_supir, sampler_node, schedule):
    import comfy_extras.nodes_custom_sampler as custom
    model = apply_supir(tiny_model, tiny_supir, latent(7))
    args = (5.0, 1.003, 0.0, 1000.0) if sampler_node is SUPIRSamplerEDM else (1.0, 1.003)
    sampler = sampler_node.execute(*args).result[0]
    sigmas = SUPIRSigmas.execute(model, 4, schedule, 1.0).result[0]
    guider = custom.CFGGuider.execute(model, fake_conditioning(seed=1), fake_conditioning(seed=2), 4.0).result[0]
    noise = custom.RandomNoise.execute(3).result[0]
    out = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": torch.zeros(1, 4, 8, 8)})
    samples = out.result[0]["samples"]
    again = custom.SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, {"samples": torch.zeros(1, 4, 8, 8)})
    assert torch.isfinite(samples).all() and samples.abs().mean() > 0
    assert torch.equal(samples, again.result[0]["samples"])


def run_restore(model, supir, hint, seed=0, preset="Quality", start="noise", steps=3, target=None, restore_cfg=-1.0):
    patched = apply_supir(model, supir, hint)
    return SUPIRRestore.execute(patched, fake_conditioning(seed=1), fake_conditioning(seed=2), {"samples": hint},
                                seed, preset, start, 0.5, "RestoreEDM", steps, 5.0, 1.003, 1.0, 4.0, 7.5,
                                restore_cfg, 0.05, None if target is None else {"samples": target}).result[0]["samples"]


@pytest.mark.parametrize("start", ["noise", "lq_embedded", "img2img"])
def test_restore_node_is_deterministic(tiny_model, tiny_supir, start):
    hint = latent(7)
    a = run_restore(tiny_model, tiny_supir, hint, seed=1, preset="Custom", start=start)
    b = run_restore(tiny_model, tiny_supir, hint, seed=1, preset="Custom", start=start)
    c = run_restore(tiny_model, tiny_supir, hint, seed=2, preset="Custom", start=start)
    assert a.shape == hint.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_start_modes_differ_and_use_the_hint(tiny_model, tiny_supir):
    hint = latent(7)
    outs = {s: run_restore(tiny_model, tiny_supir, hint, seed=1, preset="Custom", start=s)
            for s in ("noise", "lq_embedded", "img2img")}
    assert not torch.equal(outs["noise"], outs["lq_embedded"])
    assert not torch.equal(outs["lq_embedded"], outs["img2img"])


def test_presets_drive_the_sampler(tiny_model, tiny_supir, monkeypatch):
    calls = []
    import supir_restore.supir.host.restore as restore_module
    original = restore_module.supir_sigmas
    monkeypatch.setattr(restore_module, "supir_sigmas",
                        lambda model, steps, schedule, denoise=1.0: calls.append((steps, schedule)) or original(model, steps, schedule, denoise))
    run_restore(tiny_model, tiny_supir, latent(7), preset="Lightning Quality")
    assert calls == [(RESTORE_PRESETS["Lightning Quality"].steps, "supir_karras")]


def test_restore_with_restoration_guidance(tiny_model, tiny_supir):
    hint = latent(7)
    guided = run_restore(tiny_model, tiny_supir, hint, preset="Custom", target=hint, restore_cfg=4.0)
    free = run_restore(tiny_model, tiny_supir, hint, preset="Custom")
    assert (guided - hint).abs().mean() < (free - hint).abs().mean()  # pulled toward the LQ latent


def test_interrupt_stops_the_restore(tiny_model, tiny_supir):
    patched = apply_supir(tiny_model, tiny_supir, latent(7))
    guided = apply_guidance(patched, 4.0, 7.5)
    calls = []

    def interrupt_on_second_call(executor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)
        return executor(*args, **kwargs)
    import comfy.patcher_extension
    guided.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_interrupt",
                                interrupt_on_second_call)
    with pytest.raises(mm.InterruptProcessingException):
        restore_latent(guided, fake_conditioning(seed=1), fake_conditioning(seed=2), latent(7), 0,
                       RestoreSettings(steps=10), StartMode(), disable_pbar=True)
    assert len(calls) == 2
    assert not mm.processing_interrupted()


def test_a_restoration_target_with_a_preset_is_used_with_the_users_restore_cfg(tiny_model, tiny_supir):
    hint, target = latent(7), latent(8)
    node = run_restore(tiny_model, tiny_supir, hint, preset="Lightning Quality", target=target, restore_cfg=4.0)
    preset = RESTORE_PRESETS["Lightning Quality"]
    patched = apply_supir(tiny_model, tiny_supir, hint)

    def direct(settings, restoration_target):
        return restore_latent(patched, fake_conditioning(seed=1), fake_conditioning(seed=2), hint, 0, settings,
                              StartMode("noise"), restoration_target, 0.05, disable_pbar=True)
    # the node and the direct call run the same code on the same inputs
    torch.testing.assert_close(node, direct(dataclasses.replace(preset, restore_cfg=4.0), target), rtol=0, atol=0)
    assert relative_error(node, direct(preset, None)) > 1e-3  # the preset alone would ignore the target


@pytest.mark.parametrize("preset", ["Quality", "Custom"])
def test_a_restoration_target_that_would_be_ignored_is_refused(tiny_model, tiny_supir, preset):
    with pytest.raises(ValueError, match="restoration_target is connected but restore_cfg is -1 \\(off\\)"):
        run_restore(tiny_model, tiny_supir, latent(7), preset=preset, target=latent(8), restore_cfg=-1.0)


@pytest.mark.parametrize("input_name", ["hint", "restoration_target"])
def test_non_finite_latents_are_errors_naming_the_input(tiny_model, tiny_supir, input_name):
    bad = latent(7)
    bad[0, 0, 0, 0] = float("nan")
    inputs = {"hint": bad if input_name == "hint" else latent(7), "target": bad if input_name != "hint" else latent(8)}
    with pytest.raises(ValueError, match=f"^{input_name} contains 1 NaN"):
        run_restore(tiny_model, tiny_supir, inputs["hint"], preset="Custom", target=inputs["target"], restore_cfg=4.0)
