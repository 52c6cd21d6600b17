"""SPADE feature modulation, as StableSR's ``ResBlockDual`` applies it to the output of every UNet ResBlock:
``out = n(h) * (1 + gamma(f)) + beta(f)`` where ``n`` is an affine GroupNorm over the ResBlock's residual
branch ``h`` and gamma, beta come from the time-aware encoder's feature ``f`` at ``h``'s resolution."""
from __future__ import annotations

import torch
from torch import nn

HIDDEN = 128  # official mlp_shared width


class SPADE(nn.Module):
    """``channels``: the ResBlock's output width; ``feature_channels``: the encoder's (256 in the official files).
    Parameter names follow the official checkpoints (``param_free_norm`` is affine despite its name)."""

    def __init__(self, channels: int, feature_channels: int, hidden: int = HIDDEN, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.param_free_norm = ops.GroupNorm(32, channels, eps=1e-5, affine=True, **kw)
        self.mlp_shared = nn.Sequential(ops.Conv2d(feature_channels, hidden, 3, padding=1, **kw), nn.ReLU())
        self.mlp_gamma = ops.Conv2d(hidden, channels, 3, padding=1, **kw)
        self.mlp_beta = ops.Conv2d(hidden, channels, 3, padding=1, **kw)

    def forward(self, h: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """h: [B, C, H, W]; feature: [B, F, H, W] -> [B, C, H, W]. The norm runs in fp32, as the official
        GroupNorm32 does."""
        normalized = self.param_free_norm(h.float()).to(h.dtype)
        actv = self.mlp_shared(feature.to(h.dtype))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
