"""SDXL-encoder building blocks for SUPIR's control trunk, in plain torch.

The trunk is SUPIR's own network (its weights are not the user's UNet), so it is built here rather than
borrowed from the host. Every layer takes an ``ops`` namespace that provides ``Linear``, ``Conv2d``,
``GroupNorm`` and ``LayerNorm`` with torch's constructor signatures: ``torch.nn`` itself (tests, meta-device
layout checks) or one of ComfyUI's ``comfy.ops`` classes (fp8/fp16 storage with up-cast at compute, and
low-VRAM partial loading). ``attention(q, k, v, heads)`` maps ``[B, N, heads*d]`` tensors to ``[B, N, heads*d]``.

Module and parameter names follow the SGM/LDM layout of the official checkpoints.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax attention. q: [B, Nq, H*D], k/v: [B, Nk, H*D] -> [B, Nq, H*D]."""
    b, _, inner = q.shape
    q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, inner)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, cosine half first. timesteps: [B] -> [B, dim] (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def head_count(channels: int, head_channels: int = 64) -> int:
    """SDXL uses 64-channel heads; narrow test models fall back to a single head."""
    return max(1, channels // head_channels)


class ResBlock(nn.Module):
    """Pre-norm residual block with the time embedding added between the two convolutions."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.in_layers = nn.Sequential(ops.GroupNorm(32, channels, **kw), nn.SiLU(),
                                       ops.Conv2d(channels, out_channels, 3, padding=1, **kw))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(ops.GroupNorm(32, out_channels, **kw), nn.SiLU(), nn.Dropout(0.0),
                                        ops.Conv2d(out_channels, out_channels, 3, padding=1, **kw))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else ops.Conv2d(channels, out_channels, 1, **kw))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int, ops=nn, dtype=None, device=None):
        super().__init__()
        self.op = ops.Conv2d(channels, channels, 3, stride=2, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, ops=nn,
                 attention: Attention = sdpa_attention, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        inner = heads * dim_head
        self.heads = heads
        self.attention = attention
        self.to_q = ops.Linear(query_dim, inner, bias=False, **kw)
        self.to_k = ops.Linear(context_dim, inner, bias=False, **kw)
        self.to_v = ops.Linear(context_dim, inner, bias=False, **kw)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, **kw), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = self.attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, ops=nn, dtype=None, device=None):
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ops=nn, dtype=None, device=None):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4, ops, dtype, device), nn.Dropout(0.0),
                                 ops.Linear(dim * 4, dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int, ops=nn, attention: Attention = sdpa_attention,
                 dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.attn1 = CrossAttention(dim, dim, heads, dim // heads, ops, attention, **kw)
        self.ff = FeedForward(dim, ops, **kw)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim // heads, ops, attention, **kw)
        self.norm1 = ops.LayerNorm(dim, **kw)
        self.norm2 = ops.LayerNorm(dim, **kw)
        self.norm3 = ops.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """SDXL transformer stage with linear proj_in/proj_out. x: [B, C, H, W], context: [B, N, context_dim]."""

    def __init__(self, channels: int, depth: int, context_dim: int, ops=nn, attention: Attention = sdpa_attention,
                 dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm = ops.GroupNorm(32, channels, eps=1e-6, **kw)
        self.proj_in = ops.Linear(channels, channels, **kw)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, head_count(channels), context_dim, ops, attention, **kw) for _ in range(depth))
        self.proj_out = ops.Linear(channels, channels, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)
        t = self.proj_out(t)
        # contiguous like the host UNet's tensors: a channels-last result would make every later convolution
        # re-lay its weight out to match, on every call
        return t.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous() + x


class TimestepSequential(nn.Sequential):
    """Runs each layer with the inputs it takes: ResBlocks get the embedding, transformers the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
