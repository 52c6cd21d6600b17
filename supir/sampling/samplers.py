"""SUPIR's restoration samplers and schedules, k-diffusion style (plain torch, no host).

A sampler is ``f(model, x, sigmas, extra_args, callback, disable, **options)``; ``model(x, sigma, **extra_args)``
returns the (guided) x0 estimate. Each step passes its pre-churn ``sigma`` and ``sigma_next`` to the model in
``extra_args["model_options"]["transformer_options"][STEP_KEY]`` so that sigma-dependent patches (control scale,
restoration guidance) see the step's sigmas as the official sampler does, not the churned one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from tqdm.auto import trange

STEP_KEY = "supir_step"
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RestoreSettings:
    """What a restore samples with. cfg_start applies at sigma_max, cfg_end as sigma -> 0; restore_cfg <= 0
    turns restoration guidance off; s_churn is used by RestoreEDM, eta by RestoreDPM++ 2M SDE."""
    sampler: str = "RestoreEDM"
    steps: int = 50
    cfg_start: float = 4.0
    cfg_end: float = 7.5
    s_churn: float = 5.0
    s_noise: float = 1.003
    eta: float = 1.0
    restore_cfg: float = -1.0


# The official defaults: Quality and Fidelity from SUPIR_v0.yaml's default_setting with the gradio demo's
# steps, churn and noise (edm_steps 50, s_churn 5, s_noise 1.003, restoration guidance off); the Lightning
# pair from SUPIR_v0_Juggernautv9_lightning.yaml (8 steps, DPM++ 2M SDE on a Karras schedule).
RESTORE_PRESETS = {
    "Quality": RestoreSettings("RestoreEDM", 50, cfg_start=4.0, cfg_end=7.5),
    "Fidelity": RestoreSettings("RestoreEDM", 50, cfg_start=1.0, cfg_end=4.0),
    "Lightning Quality": RestoreSettings("RestoreDPM++ 2M SDE", 8, cfg_start=2.0, cfg_end=2.0, s_churn=0.0),
    "Lightning Fidelity": RestoreSettings("RestoreDPM++ 2M SDE", 8, cfg_start=1.5, cfg_end=1.5, s_churn=0.0),
}


def ddpm_sigmas(timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """The SD/SDXL training schedule: betas linear in sqrt from ``beta_start`` to ``beta_end``;
    sigma_t = sqrt((1 - abar_t) / abar_t). Returns [timesteps], ascending (sigma_max = 14.6146 at t = 999)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def discrete_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """SUPIR's spacing: integer timesteps floor(linspace(T-1, 0, n, endpoint=False)), their sigmas from the
    training ``table`` [T] in descending order, then 0. Returns [steps + 1]."""
    timesteps = np.linspace(len(table) - 1, 0, steps, endpoint=False).astype(int)
    return torch.cat([table[torch.from_numpy(timesteps)], table.new_zeros(1)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule, eq. (5), then 0. Returns [steps + 1]."""
    ramp = torch.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def restore_dpm_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """The official DPM++ 2M schedule: Karras between the discrete spacing's smallest non-zero sigma and sigma_max."""
    discrete = discrete_sigmas(steps, table)
    return karras_sigmas(steps, float(discrete[-2]), float(discrete[0]))


def sigma_ramp(sigma: float, sigma_max: float, start: float, end: float) -> float:
    """A strength that moves linearly with sigma: ``start`` at sigma_max, ``end`` as sigma -> 0."""
    return end + (start - end) * sigma / sigma_max


def churn_gamma(s_churn: float, steps: int, sigma: float, s_tmin: float = 0.0, s_tmax: float = float("inf")) -> float:
    """EDM stochastic churn: gamma = min(s_churn / n, sqrt(2) - 1) inside [s_tmin, s_tmax], else 0."""
    return min(s_churn / steps, 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def restoration_weight(sigma: float, sigma_max: float, restore_cfg: float) -> float:
    """How far restoration guidance pulls x0 to the LQ latent: (sigma / sigma_max) ** restore_cfg."""
    return (sigma / sigma_max) ** restore_cfg


def restoration_guidance(denoised: torch.Tensor, x_center: torch.Tensor, sigma: float, sigma_next: float,
                         sigma_max: float, restore_cfg: float, s_tmin: float = 0.05) -> torch.Tensor:
    """x0 <- x0 - (x0 - x_center) * (sigma / sigma_max) ** restore_cfg while sigma_next > s_tmin; off when
    restore_cfg <= 0. denoised, x_center: [B,C,H,W] (x_center broadcastable)."""
    if restore_cfg <= 0 or sigma_next <= s_tmin:
        return denoised
    return denoised - (denoised - x_center) * restoration_weight(sigma, sigma_max, restore_cfg)


def nearest_sigma(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Snap to the nearest training sigma, as SUPIR's discrete denoiser does before calling the network."""
    return table.to(sigma)[(table.to(sigma)[None] - sigma.reshape(-1, 1)).abs().argmin(dim=1)].reshape(sigma.shape)


def with_step(extra_args: dict, sigma: torch.Tensor, sigma_next: torch.Tensor, sigma_hat: torch.Tensor) -> dict:
    """``extra_args`` whose transformer options carry this step's pre-churn sigma, next sigma and churned
    sigma (before snapping to the training table)."""
    model_options = dict(extra_args.get("model_options", {}))
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options[STEP_KEY] = {"sigma": float(sigma), "sigma_next": float(sigma_next),
                                     "sigma_hat": float(sigma_hat)}
    model_options["transformer_options"] = transformer_options
    return {**extra_args, "model_options": model_options}


def gaussian_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """The noise a sampler injects after its start: standard normal draws of ``x``'s shape and dtype from a CPU
    generator seeded with ``seed`` + 1 (mod 2^64), moved to ``x``'s device, so a seed gives the same image on every
    device. Not ``seed`` itself: ComfyUI's start noise (``comfy.sample.prepare_noise``) is that generator's first
    draw, which the first injection would repeat; ComfyUI's own ``default_noise_sampler`` adds 1 on the CPU for
    the same reason."""
    generator = torch.Generator(device="cpu").manual_seed(((seed or 0) + 1) % 2 ** 64)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@torch.no_grad()
def sample_restore_edm(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                       s_tmax=float("inf"), s_noise=1.0, sigma_table=None, noise_sampler=None):
    """SUPIR's RestoreEDM: Euler steps with EDM churn (Karras et al. 2022, alg. 2 without the Heun correction).
    With ``sigma_table`` the network is called at the nearest training sigma, as the official discrete
    denoiser does; the Euler step itself uses the exact churned sigma."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, extra_args.get("seed"))
    steps = len(sigmas) - 1
    s_in = x.new_ones([x.shape[0]])
    for i in trange(steps, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = churn_gamma(s_churn, steps, float(sigma), s_tmin, s_tmax)
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + noise_sampler(sigma, sigma_hat) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        sigma_call = sigma_hat if sigma_table is None else nearest_sigma(sigma_hat, sigma_table)
        denoised = model(x, sigma_call * s_in, **with_step(extra_args, sigma, sigma_next, sigma_hat))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + (x - denoised) / sigma_hat * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_restore_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                s_noise=1.0, sigma_table=None, noise_sampler=None):
    """SUPIR's RestoreDPM++ 2M SDE (Lu et al. 2022, DPM-Solver++(2M) with SDE noise ``eta``): the data
    prediction is extrapolated from the last two steps, D = (1 + 1/2r) D_i - (1/2r) D_{i-1} with r = h_{i-1}/h_i.
    As in the official sampler, the first step is first order and adds no noise, and the last returns D;
    with ``sigma_table`` the network is called at the nearest training sigma, the solver uses the exact one."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_call = sigma if sigma_table is None else nearest_sigma(sigma, sigma_table)
        denoised = model(x, sigma_call * s_in, **with_step(extra_args, sigma, sigma_next, sigma))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(float(sigma)) - math.log(float(sigma_next))
        eta_h = eta * h
        decay = float(sigma_next / sigma) * math.exp(-eta_h)
        data = -math.expm1(-h - eta_h)
        if old_denoised is None:
            x = decay * x + data * denoised
        else:
            r = h_last / h
            x = decay * x + data * ((1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised)
            if eta:
                x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-math.expm1(-2 * eta_h)) ** 0.5 * s_noise
        old_denoised, h_last = denoised, h
    return x


def step_sigmas(call_sigma: torch.Tensor, model_options: dict) -> tuple[float, float]:
    """(sigma, sigma_next) of the current step: given by SUPIR's samplers, else found in the sampler's schedule."""
    transformer_options = model_options.get("transformer_options", {})
    step = transformer_options.get(STEP_KEY)
    if step:
        return step["sigma"], step["sigma_next"]
    sigma = float(call_sigma.max())
    schedule = transformer_options.get("sample_sigmas")
    if schedule is None:
        return sigma, 0.0
    i = int((schedule.float().cpu() - sigma).abs().argmin())
    return sigma, float(schedule[i + 1]) if i + 1 < len(schedule) else 0.0


START_MODES = ("noise", "lq_embedded", "img2img")


@dataclass(frozen=True)
class StartMode:
    name: str = "noise"
    denoise: float = 1.0


def preset_settings(preset: str, custom: RestoreSettings, guided: bool = False) -> RestoreSettings:
    """The named official preset, or ``custom`` for "Custom". ``guided`` (a restoration target is given): the
    preset with ``custom``'s restore_cfg, since the official presets leave restoration guidance off."""
    if preset == "Custom":
        return custom
    if preset not in RESTORE_PRESETS:
        raise ValueError(f"preset '{preset}' is not one of {', '.join(RESTORE_PRESETS)}, Custom")
    return replace(RESTORE_PRESETS[preset], restore_cfg=custom.restore_cfg) if guided else RESTORE_PRESETS[preset]
