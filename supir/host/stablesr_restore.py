"""StableSR sampling on ComfyUI: its schedules as SIGMAS, its DDPM and DDIM with the official starts as SAMPLER
objects (usable in SamplerCustomAdvanced), its prompts passed literally, and the all-in-one restore."""
from __future__ import annotations

import torch

import comfy.k_diffusion.sampling
import comfy.samplers

from ..sampling.samplers import gaussian_noise_sampler
from ..stablesr.sampling import (START_MODES, StableSRSettings, check_settings, sample_stablesr_ddim)
from ..stablesr.schedule import TIMESTEPS, ddim_alpha_timesteps, respaced_timesteps, schedule_sigmas
from .restore import sample


def _sigma_table(model_sampling) -> torch.Tensor:
    table = getattr(model_sampling, "sigmas", None)
    if table is None or len(table) != TIMESTEPS:
        raise ValueError("StableSR samples on the 1000-step discrete schedule of SD 2.x; this MODEL's sampling is "
                         f"{type(model_sampling).__name__}. Use the SD 2.x checkpoint without a ModelSampling "
                         "node that changes its schedule.")
    return table.float().cpu()


def stablesr_sigmas(model, steps: int, sampler: str = "ddpm") -> torch.Tensor:
    """The official schedule on ``model``'s training sigmas: ``ddpm`` at round(k·999/(N−1)) (N = 200: 999, 994,
    ..., 0), ``ddim`` at range(0, 1000, 1000 // N) reversed; then 0. Returns [steps + 1]."""
    table = _sigma_table(model.get_model_object("model_sampling"))
    if sampler == "ddpm":
        return schedule_sigmas(table, respaced_timesteps(steps))
    if sampler == "ddim":
        return schedule_sigmas(table, ddim_alpha_timesteps(steps))
    raise ValueError(f"sampler '{sampler}' is not one of ddpm, ddim")


class StableSRSampler(comfy.samplers.KSAMPLER):
    """A sampler that starts as StableSR's scripts do, whatever the first sigma: ``lr_latent``, the connected
    latent plus σ₀·noise (x_vp = √ᾱ z + √(1 − ᾱ) ε; ComfyUI would scale the noise by √(1 + σ²) at σ_max);
    ``noise``, pure noise (x_vp = ε), the connected latent only giving the size."""

    def __init__(self, sampler_function, start: str, extra_options=None):
        if start not in START_MODES:
            raise ValueError(f"start '{start}' is not one of {', '.join(START_MODES)}")
        super().__init__(sampler_function, extra_options or {})
        self.start = start

    def max_denoise(self, model_wrap, sigmas):
        return self.start == "noise"

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        if self.start == "noise" and latent_image is not None:
            latent_image = torch.zeros_like(latent_image)
        return super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                              disable_pbar)


def _official_ddim_pairing(table: torch.Tensor, sigmas: torch.Tensor):
    """The model timesteps and final σ of the official DDIM when ``sigmas`` is its schedule, else (None, None)."""
    steps = len(sigmas) - 1
    if steps < 2 or float(sigmas[-1]) != 0:
        return None, None
    official = schedule_sigmas(table, ddim_alpha_timesteps(steps))
    if not torch.allclose(sigmas.float().cpu(), official, rtol=1e-5):
        return None, None
    return respaced_timesteps(steps)[::-1], float(table[0])


def stablesr_sampler(sampler: str = "ddpm", start: str = "lr_latent", eta: float = 0.0) -> StableSRSampler:
    """``ddpm``: the official respaced DDPM (ComfyUI's ddpm step; exact on :func:`stablesr_sigmas`). ``ddim``: the
    official DDIM with ``eta``; on the ddim schedule of :func:`stablesr_sigmas` the model gets the official
    (respaced) timesteps and the last step ends at t = 0, as the negative-prompt script does. Both draw their step
    noise with :func:`gaussian_noise_sampler` (on the CPU what ComfyUI's ddpm draws, on a GPU the same as on
    the CPU)."""
    if sampler == "ddpm":
        def ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None):
            noise = gaussian_noise_sampler(x, (extra_args or {}).get("seed"))
            return comfy.k_diffusion.sampling.sample_ddpm(model, x, sigmas, extra_args, callback, disable, noise)
        return StableSRSampler(ddpm, start)
    if sampler != "ddim":
        raise ValueError(f"sampler '{sampler}' is not one of ddpm, ddim")

    def ddim(model, x, sigmas, extra_args=None, callback=None, disable=None):
        table = _sigma_table(model.inner_model.inner_model.model_sampling)
        timesteps, sigma_final = _official_ddim_pairing(table, sigmas)
        return sample_stablesr_ddim(model, x, sigmas, extra_args, callback, disable, eta=eta,
                                    model_timesteps=timesteps, sigma_final=sigma_final)
    return StableSRSampler(ddim, start)


def escape_prompt(text: str) -> str:
    """``text`` with its parentheses escaped, so ComfyUI's prompt parser reads "(worst quality:2)" literally, as
    StableSR's scripts pass it to OpenCLIP."""
    return text.replace("(", "\\(").replace(")", "\\)")


def stablesr_conditioning(clip, positive: str = "", negative: str = "", literal: bool = True):
    """(positive, negative) CONDITIONING from the SD 2.x CLIP; with ``literal`` the texts are not parsed for
    ComfyUI's (word:weight) emphasis."""
    if clip is None:
        raise ValueError("no CLIP: the checkpoint has no text encoder; load the SD 2.x checkpoint with its CLIP")

    def encode(text):
        tokens = clip.tokenize(escape_prompt(text) if literal else text)
        return clip.encode_from_tokens_scheduled(tokens)
    return encode(positive), encode(negative)


def restore_stablesr(model, positive, negative, lr_latent: torch.Tensor, seed: int, settings: StableSRSettings,
                     disable_pbar: bool | None = None) -> torch.Tensor:
    """Sample a restoration of ``lr_latent``'s size (raw LATENT samples of the upscaled LR image) with a
    StableSR-patched SD 2.x ``model``. Returns raw LATENT samples."""
    check_settings(settings)
    sigmas = stablesr_sigmas(model, settings.steps, settings.sampler)
    sampler = stablesr_sampler(settings.sampler, settings.start, settings.eta)
    return sample(model, lr_latent, seed, settings.cfg, sampler, sigmas, positive, negative, disable_pbar)
