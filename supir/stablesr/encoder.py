"""StableSR's time-aware encoder (``structcond_stage_model``, the official ``EncoderUNetModelWT``): a half UNet
on the clean LR latent and the sampler's original-scale timestep whose features, taken where each level ends
(before its Downsample) and after the middle block, each pass a time-conditioned ResBlock to
``feature_channels`` and drive the SPADE layers of the UNet ResBlocks at the same resolution."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import Downsample, ResBlock, timestep_embedding
from ..weights import count_indexed

HEADS = 4  # the official encoder's attention heads (not recorded in a file's shapes)


@dataclass(frozen=True)
class EncoderConfig:
    """The encoder's shape: base width, width multiplier per level, ResBlocks per level, the levels with
    self-attention after each ResBlock, and the width of the features handed to SPADE."""
    in_channels: int = 4
    model_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    feature_channels: int = 256

    @property
    def embed_channels(self) -> int:
        return 4 * self.model_channels

    def level_widths(self) -> list[int]:
        return [self.model_channels * m for m in self.channel_mult]

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "EncoderConfig":
        """The config of an encoder state dict (keys without the ``structcond_stage_model.`` prefix): one
        feature per level, and per level ``num_res_blocks`` blocks plus a Downsample (none after the last)."""
        model_channels, in_channels = shapes["input_blocks.0.0.weight"][:2]
        levels = count_indexed(shapes, r"fea_tran\.(\d+)\.")
        blocks = count_indexed(shapes, r"input_blocks\.(\d+)\.")
        per_level = blocks // levels  # the first block (conv_in) stands in for the missing last Downsample
        firsts = [1 + level * per_level for level in range(levels)]
        return cls(in_channels, model_channels,
                   tuple(shapes[f"input_blocks.{i}.0.in_layers.2.weight"][0] // model_channels for i in firsts),
                   per_level - 1,
                   tuple(level for level, i in enumerate(firsts) if f"input_blocks.{i}.1.qkv.weight" in shapes),
                   shapes["fea_tran.0.out_layers.3.weight"][0])


class AttentionBlock(nn.Module):
    """Self-attention over all positions with the legacy fused ``qkv`` (1-D convolutions; per head, q, k and v
    lie next to each other in the channel axis)."""

    def __init__(self, channels: int, heads: int = HEADS, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.heads = heads
        self.norm = ops.GroupNorm(32, channels, **kw)
        self.qkv = ops.Conv1d(channels, 3 * channels, 1, **kw)
        self.proj_out = ops.Conv1d(channels, channels, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, -1).split(c // self.heads, dim=1)
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
        return (flat + self.proj_out(out.reshape(b, c, -1))).reshape(b, c, *spatial)


class EncoderBlock(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class TimeAwareEncoder(nn.Module):
    """forward(lr_latent [B, 4, H, W] (scaled like the UNet's input), timesteps [B] on the 0..999 scale) ->
    features by spatial size {(h, w): [B, feature_channels, h, w]} at full, 1/2, 1/4 and 1/8 resolution."""

    def __init__(self, config: EncoderConfig = EncoderConfig(), ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.config = config
        ch, emb = config.model_channels, config.embed_channels
        self.time_embed = nn.Sequential(ops.Linear(ch, emb, dtype=dtype, device=device), nn.SiLU(),
                                        ops.Linear(emb, emb, dtype=dtype, device=device))
        blocks = [EncoderBlock(ops.Conv2d(config.in_channels, ch, 3, padding=1, dtype=dtype, device=device))]
        tapped = []
        for level, width in enumerate(config.level_widths()):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock(ch, emb, width, **kw)]
                ch = width
                if level in config.attention_levels:
                    layers.append(AttentionBlock(ch, **kw))
                blocks.append(EncoderBlock(*layers))
            if level != len(config.channel_mult) - 1:
                tapped.append(ch)
                blocks.append(EncoderBlock(Downsample(ch, **kw)))
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = EncoderBlock(ResBlock(ch, emb, ch, **kw), AttentionBlock(ch, **kw),
                                         ResBlock(ch, emb, ch, **kw))
        tapped.append(ch)
        self.fea_tran = nn.ModuleList(ResBlock(c, emb, config.feature_channels, **kw) for c in tapped)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        taps = []
        for block in self.input_blocks:
            if isinstance(block[0], Downsample):
                taps.append(x)
            x = block(x, emb)
        taps.append(self.middle_block(x, emb))
        return {tuple(t.shape[-2:]): tran(t, emb) for t, tran in zip(taps, self.fea_tran)}


def parameter_count(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
