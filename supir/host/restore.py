"""Restoration sampling on ComfyUI: SUPIR's samplers as SAMPLER objects, its schedules as SIGMAS, CFG and
restoration guidance as model patches (so stock KSampler and SamplerCustomAdvanced use them too), and the
all-in-one restore with SUPIR's presets and start modes."""
from __future__ import annotations

import torch

import comfy.k_diffusion.sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..sampling.samplers import (START_MODES, STEP_KEY, RestoreSettings, StartMode, discrete_sigmas,
                                 restoration_guidance, restore_dpm_sigmas, sample_restore_dpmpp_2m_sde,
                                 sample_restore_edm, sigma_ramp, step_sigmas)

EDM, DPM = "RestoreEDM", "RestoreDPM++ 2M SDE"
SCHEDULES = {"supir_discrete": discrete_sigmas, "supir_karras": restore_dpm_sigmas}


def restore_edm_sampler(s_churn: float = 5.0, s_noise: float = 1.003, s_tmin: float = 0.0,
                        s_tmax: float = float("inf")) -> comfy.samplers.KSAMPLER:
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        table = model.inner_model.inner_model.model_sampling.sigmas
        return sample_restore_edm(model, x, sigmas, extra_args, callback, disable, s_churn=s_churn, s_tmin=s_tmin,
                                  s_tmax=s_tmax, s_noise=s_noise, sigma_table=table)
    return comfy.samplers.KSAMPLER(sample)


def restore_dpm_sampler(eta: float = 1.0, s_noise: float = 1.003) -> comfy.samplers.KSAMPLER:
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        positive = sigmas[sigmas > 0]
        seed = (extra_args or {}).get("seed")
        noise = comfy.k_diffusion.sampling.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=seed,
                                                                    cpu=True) if len(positive) else None
        table = model.inner_model.inner_model.model_sampling.sigmas
        return sample_restore_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta=eta,
                                           s_noise=s_noise, sigma_table=table, noise_sampler=noise)
    return comfy.samplers.KSAMPLER(sample)


def supir_sigmas(model, steps: int, schedule: str = "supir_discrete", denoise: float = 1.0) -> torch.Tensor:
    """SUPIR's schedule on ``model``'s training sigmas; with ``denoise`` < 1 the last ``steps`` of a
    ``steps / denoise`` schedule (img2img)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule '{schedule}' is not one of {', '.join(SCHEDULES)}")
    if not 0 < denoise <= 1:
        raise ValueError(f"denoise {denoise} must be in (0, 1]")
    table = model.get_model_object("model_sampling").sigmas.float().cpu()
    full = SCHEDULES[schedule](int(steps / denoise), table)
    return full[-(steps + 1):]


def apply_guidance(model, cfg_start: float, cfg_end: float, restore_cfg: float = -1.0,
                   restoration_target: torch.Tensor | None = None, restore_cfg_s_tmin: float = 0.05):
    """A clone of ``model`` whose CFG scale moves linearly with sigma from ``cfg_start`` (sigma_max) to
    ``cfg_end`` (sigma -> 0), and, when ``restore_cfg`` > 0, whose x0 estimate is pulled toward
    ``restoration_target`` (raw LATENT samples of the stage-1 image re-encoded by the SDXL VAE)."""
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    m = model.clone()

    def linear_cfg(args):
        step = args["model_options"].get("transformer_options", {}).get(STEP_KEY)
        sigma = step["sigma_hat"] if step else float(args["sigma"].max())  # official: the unsnapped churned sigma
        scale = sigma_ramp(sigma, sigma_max, cfg_start, cfg_end)
        return args["uncond"] + (args["cond"] - args["uncond"]) * scale
    m.set_model_sampler_cfg_function(linear_cfg, disable_cfg1_optimization=True)

    if restoration_target is not None and restore_cfg <= 0:
        raise ValueError(f"a restoration_target is connected but restore_cfg is {restore_cfg:g} (off), so it would "
                         "be ignored; set restore_cfg above 0 (4 is the paper's) to pull toward it, or disconnect it")
    if restore_cfg > 0:
        if restoration_target is None:
            raise ValueError("restore_cfg > 0 needs a restoration_target: VAE Encode the stage-1 image with the "
                             "SDXL VAE and connect it (or set restore_cfg to -1 to turn restoration guidance off)")
        center = model.get_model_object("latent_format").process_in(restoration_target.float())

        def restore(args):
            denoised = args["denoised"]
            if center.shape[-2:] != denoised.shape[-2:]:
                raise ValueError(f"the restoration target is {center.shape[-1] * 8}x{center.shape[-2] * 8} px but "
                                 f"the latent is {denoised.shape[-1] * 8}x{denoised.shape[-2] * 8} px; encode the "
                                 f"stage-1 image of this restore")
            sigma, sigma_next = step_sigmas(args["sigma"], args["model_options"])
            target = comfy.utils.repeat_to_batch_size(center, denoised.shape[0]).to(denoised)
            return restoration_guidance(denoised, target, sigma, sigma_next, sigma_max, restore_cfg, restore_cfg_s_tmin)
        m.set_model_sampler_post_cfg_function(restore)
    return m


def restore_latent(model, positive, negative, hint: torch.Tensor, seed: int, settings: RestoreSettings,
                   start: StartMode = StartMode(), restoration_target: torch.Tensor | None = None,
                   restore_cfg_s_tmin: float = 0.05, disable_pbar: bool | None = None) -> torch.Tensor:
    """Sample a restoration of ``hint``'s size with a SUPIR-patched ``model``. Start modes: ``noise`` (the
    official pure-noise start, x_T = n * sqrt(1 + sigma_max^2)), ``lq_embedded`` (the hint latent noised to
    sigma_max) and ``img2img`` (the hint noised to the sigma at ``denoise``). Returns raw LATENT samples."""
    if start.name not in START_MODES:
        raise ValueError(f"start '{start.name}' is not one of {', '.join(START_MODES)}")
    guided = apply_guidance(model, settings.cfg_start, settings.cfg_end, settings.restore_cfg, restoration_target,
                            restore_cfg_s_tmin)
    if settings.sampler == EDM:
        sampler, schedule = restore_edm_sampler(settings.s_churn, settings.s_noise), "supir_discrete"
    elif settings.sampler == DPM:
        sampler, schedule = restore_dpm_sampler(settings.eta, settings.s_noise), "supir_karras"
    else:
        raise ValueError(f"sampler '{settings.sampler}' is not one of {EDM}, {DPM}")
    sigmas = supir_sigmas(model, settings.steps, schedule, start.denoise if start.name == "img2img" else 1.0)
    latent = torch.zeros_like(hint) if start.name == "noise" else hint
    return sample(guided, latent, seed, settings.cfg_start, sampler, sigmas, positive, negative, disable_pbar)


def sample(model, latent: torch.Tensor, seed: int, cfg: float, sampler, sigmas: torch.Tensor, positive, negative,
           disable_pbar: bool | None = None) -> torch.Tensor:
    """ComfyUI's custom sampling of raw LATENT samples with its noise for ``seed``, latent previews and progress
    bar (shown unless ``disable_pbar``; by default as ComfyUI's setting)."""
    noise = comfy.sample.prepare_noise(latent, seed)
    callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
    if disable_pbar is None:
        disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=disable_pbar, seed=seed)
