"""StableSR's sampling schedule: SD's scaled-linear betas over 1000 steps, respaced to N steps at the
timesteps ``round(k * 999 / (N - 1))`` (the official ``space_timesteps``), and the DDPM noise levels there."""
from __future__ import annotations

import torch

TIMESTEPS = 1000
LINEAR_START, LINEAR_END = 0.00085, 0.012


def alphas_cumprod(timesteps: int = TIMESTEPS, start: float = LINEAR_START, end: float = LINEAR_END) -> torch.Tensor:
    """ᾱ_t for t = 0 .. timesteps-1 (float64): betas = linspace(sqrt(start), sqrt(end), timesteps)^2."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def respaced_timesteps(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """The N original-scale timesteps StableSR samples at, ascending: round(k (T-1) / (N-1)) for k = 0 .. N-1
    (N = 200: 0, 5, 10, ..., 994, 999; N = 4: 0, 333, 666, 999). As the official ``space_timesteps``, the
    position is a running float sum of the stride, which rounds some halves down (N = 21: 499, not 500)."""
    if not 1 < steps <= timesteps:
        raise ValueError(f"steps must be between 2 and {timesteps}, got {steps}")
    stride, position, taken = (timesteps - 1) / (steps - 1), 0.0, []
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return taken


def respaced_sigmas(steps: int) -> torch.Tensor:
    """The noise levels σ = sqrt((1 - ᾱ) / ᾱ) at the respaced timesteps, descending, then 0: what a sampler
    that steps by σ (ComfyUI's ``ddpm`` sampler) needs to take exactly the official DDPM steps."""
    ac = alphas_cumprod()[respaced_timesteps(steps)]
    sigmas = ((1 - ac) / ac).sqrt().flip(0)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()
