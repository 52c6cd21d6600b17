"""StableSR's sampling schedules on SD's 1000-step training table (σ_t = √((1 − ᾱ_t) / ᾱ_t), ascending in t):
the respaced DDPM timesteps (the official ``space_timesteps``: every (T−1)/(N−1), by a running float sum), and the DDIM spacing of
the negative-prompt script, whose ᾱ come from ``range(0, T, T // N)`` while the model is given the respaced
timesteps."""
from __future__ import annotations

import torch

TIMESTEPS = 1000


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


def ddim_alpha_timesteps(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """The timesteps whose ᾱ the official DDIM steps use, ascending: ``range(0, T, T // N)`` (its
    ``make_ddim_timesteps`` without the usual +1), the first N (N = 50: 0, 20, ..., 980)."""
    if not 1 < steps <= timesteps:
        raise ValueError(f"steps must be between 2 and {timesteps}, got {steps}")
    return list(range(0, timesteps, timesteps // steps))[:steps]


def schedule_sigmas(table: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """The training ``table`` [T] at ascending ``timesteps``, in sampling order (descending), then 0. Returns
    [len(timesteps) + 1]."""
    return torch.cat([table[torch.tensor(timesteps)].flip(0), table.new_zeros(1)])
