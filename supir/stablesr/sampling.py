"""StableSR's samplers in ComfyUI's σ space (x = x_vp / √ᾱ, σ = √((1 − ᾱ) / ᾱ)).

The official respaced DDPM (``scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py``) is ComfyUI's own ``ddpm``
step on the respaced σ. The official DDIM of the negative-prompt script gives the model a different timestep from
the one its ᾱ belong to; :func:`sample_stablesr_ddim` reproduces that, publishing each step's model timestep in the
transformer options under :data:`TIMESTEP_KEY` for the StableSR patch to use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import trange

from ..sampling.samplers import gaussian_noise_sampler

TIMESTEP_KEY = "stablesr_timestep"
SAMPLERS = ("ddpm", "ddim")
START_MODES = ("lr_latent", "noise")
NEGATIVE_PROMPT = "3d, cartoon, anime, sketches, (worst quality:2), (low quality:2)"
POSITIVE_PROMPT = "(masterpiece:2), (best quality:2), (realistic:2), (very clear:2)"  # the script's --use_posi_prompt


@dataclass(frozen=True)
class StableSRSettings:
    """What a StableSR restore samples with. ``start``: ``lr_latent`` (the LR latent noised to the first step,
    x_vp = √ᾱ z + √(1 − ᾱ) ε) or ``noise`` (x_vp = ε). ``cfg`` 1 runs no unconditional pass; ``eta`` is DDIM's."""
    sampler: str
    steps: int
    start: str
    cfg: float = 1.0
    eta: float = 0.0


STABLESR_PRESETS = {
    "DDPM 200 (official)": StableSRSettings("ddpm", 200, "lr_latent"),
    "Turbo DDPM 4": StableSRSettings("ddpm", 4, "lr_latent"),
    "DDIM 50 + negative prompt": StableSRSettings("ddim", 50, "noise", cfg=7.0),
    "DDIM 20 eta 1 + negative prompt (768v, 4K)": StableSRSettings("ddim", 20, "noise", cfg=7.0, eta=1.0),
}


def check_settings(settings: StableSRSettings) -> None:
    if settings.sampler not in SAMPLERS:
        raise ValueError(f"sampler '{settings.sampler}' is not one of {', '.join(SAMPLERS)}")
    if settings.start not in START_MODES:
        raise ValueError(f"start '{settings.start}' is not one of {', '.join(START_MODES)}")


def with_timestep(extra_args: dict, timestep: int) -> dict:
    """``extra_args`` whose transformer options tell the StableSR patch the model timestep of this step."""
    model_options = dict(extra_args.get("model_options", {}))
    model_options["transformer_options"] = {**model_options.get("transformer_options", {}), TIMESTEP_KEY: timestep}
    return {**extra_args, "model_options": model_options}


@torch.no_grad()
def sample_stablesr_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0,
                         model_timesteps=None, sigma_final=None, noise_sampler=None):
    """DDIM (Song et al. 2021, eq. 12) as StableSR's negative-prompt script runs it.

    Step i goes from ᾱ_t = 1 / (1 + σ_i²) to ᾱ_prev = 1 / (1 + σ_{i+1}²):
    x_prev = √ᾱ_prev x0 + √(1 − ᾱ_prev − s²) ε̂ + s n, with s = eta √((1 − ᾱ_prev) / (1 − ᾱ_t) (1 − ᾱ_t / ᾱ_prev)).
    The official last step ends at ᾱ of t = 0 (σ = ``sigma_final``), not at 0, and returns that x_vp; so does this
    one when the schedule ends in 0. ``model_timesteps`` [len(sigmas) - 1], when given, are the timesteps the model
    is called with (published under :data:`TIMESTEP_KEY`). x: [B, C, H, W] in σ space; returns the same.
    """
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = noise_sampler or gaussian_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        args = with_timestep(extra_args, model_timesteps[i]) if model_timesteps is not None else extra_args
        denoised = model(x, sigma * s_in, **args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        last = sigma_next == 0 and sigma_final is not None
        a_t, a_prev = 1 / (1 + sigma ** 2), 1 / (1 + (sigmas.new_tensor(sigma_final) if last else sigma_next) ** 2)
        eps = (x - denoised) / sigma
        s = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x_vp = a_prev.sqrt() * denoised + (1 - a_prev - s ** 2).clamp(min=0).sqrt() * eps
        if s > 0:
            x_vp = x_vp + s * noise_sampler(sigma, sigma_next)
        x = x_vp if last else x_vp / a_prev.sqrt()
    return x
