"""Tier 2: StableSR sampling on ComfyUI (tiny SD 2.1 layout, seeded weights). The pack's DDPM and DDIM restores
equal the official samplers' maths written out here (respaced DDPM posterior; DDIM with the negative-prompt
script's timestep pairing and CFG) over a walk of StableSR's UNet, for eps and v prediction; one tile of tiled
aggregation equals none; an interrupt stops sampling and leaves the model as it was."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.utils  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from stablesr_helpers import lr_latent, plain_out, stablesr_reference  # noqa: E402
from supir_restore.supir.host.stablesr import apply_stablesr  # noqa: E402
from supir_restore.supir.host.stablesr_restore import restore_stablesr, stablesr_sigmas  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.sampling.samplers import ddpm_sigmas  # noqa: E402
from supir_restore.supir.stablesr.sampling import StableSRSettings  # noqa: E402
from supir_restore.supir.stablesr.schedule import ddim_alpha_timesteps, respaced_timesteps  # noqa: E402
from tiny_models import tiny_sd21  # noqa: E402

ALPHAS = (1 / (1 + ddpm_sigmas().double() ** 2))  # ᾱ_t of SD's schedule, t = 0 .. 999
SEED = 7


def conditioning(seed, batch=1):
    context = torch.randn(batch, 5, 1024, generator=torch.Generator().manual_seed(seed))
    return [[context, {}]]


def official_unet(patched, sr, lr):
    """StableSR's UNet walk at (x_vp, t) with context c: its raw output (eps, or v for a v-prediction model)."""
    unet = patched.model.diffusion_model
    z = patched.get_model_object("latent_format").process_in(lr)

    def out(x, t, context):
        return stablesr_reference(unet, sr, x, torch.full((x.shape[0],), float(t)), context,
                                  z.expand(len(x), -1, -1, -1))
    return out


def official_ddpm(unet, z, noise, timesteps, context, step_noise, v_prediction):
    """The official respaced DDPM (p_sample with the respaced betas; x0 from eps, or from v as
    √ᾱ x − √(1 − ᾱ) v), from x_T = q_sample(z, 999, noise)."""
    a_T = ALPHAS[999].float()
    x = a_T.sqrt() * z + (1 - a_T).sqrt() * noise
    for i in reversed(range(len(timesteps))):
        a = ALPHAS[timesteps[i]]
        a_prev = ALPHAS[timesteps[i - 1]] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - a / a_prev
        coef1, coef2 = beta * a_prev.sqrt() / (1 - a), (1 - a_prev) * (1 - beta).sqrt() / (1 - a)
        out, a = unet(x, timesteps[i], context), a.float()
        x0 = a.sqrt() * x - (1 - a).sqrt() * out if v_prediction else (x - (1 - a).sqrt() * out) / a.sqrt()
        x = coef1.float() * x0 + coef2.float() * x
        if i > 0:
            x = x + (beta * (1 - a_prev) / (1 - a)).sqrt().float() * step_noise()
    return x


def official_ddim(unet, noise, steps, context, negative, scale, eta, step_noise, v_prediction):
    """The official DDIM of the negative-prompt script: the model at the respaced timesteps, ᾱ from
    range(0, 1000, 1000 // N), CFG e_neg + scale (e_pos − e_neg) on the outputs, v turned into eps with the DDIM
    ᾱ (e = √ᾱ v + √(1 − ᾱ) x), from pure noise."""
    model_t, alpha_t = respaced_timesteps(steps), ddim_alpha_timesteps(steps)
    x = noise
    for index in reversed(range(steps)):
        a = ALPHAS[alpha_t[index]].float()
        a_prev = ALPHAS[alpha_t[index - 1] if index > 0 else 0].float()
        e_neg = unet(x, model_t[index], negative)
        e = e_neg + scale * (unet(x, model_t[index], context) - e_neg)
        if v_prediction:
            e = a.sqrt() * e + (1 - a).sqrt() * x
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        s = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - s ** 2).sqrt() * e
        if s > 0:
            x = x + s * step_noise()
    return x


@pytest.mark.parametrize("v_prediction", [False, True], ids=["eps", "v"])
def test_ddpm_restore_equals_the_official_respaced_ddpm(stablesr, v_prediction):
    model = tiny_sd21(seed=0, v_prediction=v_prediction)
    lr = lr_latent()
    patched = apply_stablesr(model, stablesr, lr)
    positive = conditioning(1)
    out = restore_stablesr(patched, positive, positive, lr, SEED, StableSRSettings("ddpm", 4, "lr_latent"),
                           disable_pbar=True)

    generator = torch.Generator().manual_seed(SEED + 1)  # the step noise: ComfyUI's ddpm noise sampler on the CPU
    noise = comfy.sample.prepare_noise(lr, SEED)
    latent_format = model.get_model_object("latent_format")
    with torch.no_grad():
        x = official_ddpm(official_unet(patched, stablesr, lr), latent_format.process_in(lr), noise,
                          respaced_timesteps(4), positive[0][0], lambda: torch.randn(lr.shape, generator=generator),
                          v_prediction)
    expected = latent_format.process_out(x)
    # the same float32 maths as the official loop in another order (ComfyUI's sampler, its CFG and the pack's
    # patches); 4 UNet steps carry each step's rounding forward
    assert_close_relative(out, expected, 1e-4)
    assert relative_error(out, latent_format.process_out(latent_format.process_in(lr))) > 1e-2  # it sampled


@pytest.mark.parametrize("v_prediction", [False, True], ids=["eps", "v"])
def test_ddim_restore_equals_the_official_negative_prompt_ddim(stablesr, v_prediction):
    model = tiny_sd21(seed=0, v_prediction=v_prediction)
    lr = lr_latent()
    patched = apply_stablesr(model, stablesr, lr)
    positive, negative = conditioning(1), conditioning(2)
    settings = StableSRSettings("ddim", 5, "noise", cfg=3.0, eta=1.0)
    out = restore_stablesr(patched, positive, negative, lr, SEED, settings, disable_pbar=True)

    generator = torch.Generator().manual_seed(SEED + 1)  # the step noise, fresh from the start noise's
    noise = comfy.sample.prepare_noise(lr, SEED)
    with torch.no_grad():
        x = official_ddim(official_unet(patched, stablesr, lr), noise, 5, positive[0][0], negative[0][0], 3.0, 1.0,
                          lambda: torch.randn(lr.shape, generator=generator), v_prediction)
    # as the DDPM above; CFG 3 and 5 steps from pure noise carry each step's rounding forward
    assert_close_relative(out, model.get_model_object("latent_format").process_out(x), 1e-4)


def test_stablesr_sigmas_are_the_models_own_at_the_official_timesteps():
    model = tiny_sd21(seed=0)
    table = model.get_model_object("model_sampling").sigmas
    sigmas = stablesr_sigmas(model, 4)
    torch.testing.assert_close(sigmas, torch.cat([table[[999, 666, 333, 0]], torch.zeros(1)]), rtol=0, atol=0)
    timesteps = model.get_model_object("model_sampling").timestep(sigmas[:-1])
    assert timesteps.tolist() == [999, 666, 333, 0]  # what the UNet and the encoder are given
    assert stablesr_sigmas(model, 50, "ddim")[0] == table[980]
    with pytest.raises(ValueError, match="sampler 'euler' is not one of ddpm, ddim"):
        stablesr_sigmas(model, 4, "euler")


def test_one_tile_equals_tiled_aggregation_off(stablesr):
    lr = lr_latent()
    patched = apply_stablesr(tiny_sd21(seed=0), stablesr, lr)
    settings = StableSRSettings("ddpm", 4, "lr_latent")
    positive = conditioning(1)
    plain = restore_stablesr(patched, positive, positive, lr, SEED, settings, disable_pbar=True)
    tiled = restore_stablesr(apply_tiled_aggregation(patched, 16, 8), positive, positive, lr, SEED, settings,
                             disable_pbar=True)
    assert_close_relative(tiled, plain, 1e-6)  # one tile weighs the whole canvas by 1: float32 rounding only
    two_tiles = restore_stablesr(apply_tiled_aggregation(patched, 8, 8), positive, positive, lr, SEED, settings,
                                 disable_pbar=True)
    assert relative_error(two_tiles, plain) > 1e-3  # two tiles do differ, so the one-tile equality is not vacuous


def test_an_interrupt_stops_sampling_and_leaves_the_model_as_it_was(stablesr, monkeypatch):
    model = tiny_sd21(seed=0)
    lr = lr_latent()
    x, sigma, context = torch.randn(1, 4, 8, 16), torch.tensor([3.0]), conditioning(1)[0][0]
    before = plain_out(model, x, sigma, context)
    steps = []

    def hook(value, total, preview, node_id=None):  # what ComfyUI's server hook does after Cancel is pressed
        steps.append(value)
        comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        restore_stablesr(apply_stablesr(model, stablesr, lr), conditioning(1), conditioning(1), lr, SEED,
                         StableSRSettings("ddpm", 20, "lr_latent"), disable_pbar=True)
    assert steps == [1]  # stopped at the first step's progress report
    torch.testing.assert_close(plain_out(model, x, sigma, context), before, rtol=0, atol=0)  # the same call
