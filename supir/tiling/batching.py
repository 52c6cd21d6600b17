"""Tile batching for tiled aggregation: a model call's per-sample inputs repeated for a group of tiles stacked
tile-major, and per-tile captions put in the positive rows. Plain torch; the patch that uses them is
``host/tiled_aggregation.py``."""
from __future__ import annotations

import math

import torch

from .grid import Tile

POOLED_WIDTH = 1280  # SDXL's y vector starts with the pooled text embedding


def repeat_tokens(context: torch.Tensor, tokens: int) -> torch.Tensor:
    """Repeat a [.., N, C] context along its tokens to ``tokens`` (a multiple of N); attention is unchanged."""
    return context.repeat_interleave(tokens // context.shape[-2], dim=-2) if context.shape[-2] != tokens else \
        context


def batched(value, batch: int, k: int):
    """Per-sample tensors repeated for ``k`` tiles stacked tile-major; anything else passed through."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch and k > 1:
        return value.repeat(k, *([1] * (value.ndim - 1)))
    return value


def tile_conditioning(context: torch.Tensor, y: torch.Tensor | None, tile_context: torch.Tensor,
                      tile_pooled: torch.Tensor | None, group: list[Tile], tiles: list[Tile], chunks: list[int],
                      batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each tile's caption replaces the positive (cond) rows' text context and pooled embedding."""
    per_chunk = batch // len(chunks)
    tile_context = tile_context.to(context)
    tokens = math.lcm(context.shape[-2], tile_context.shape[-2])
    context, tile_context = repeat_tokens(context, tokens).clone(), repeat_tokens(tile_context, tokens)
    y = None if y is None else y.clone()
    for k, tile in enumerate(group):
        index = tiles.index(tile)
        for c, kind in enumerate(chunks):
            if kind != 0:
                continue
            rows = slice(k * batch + c * per_chunk, k * batch + (c + 1) * per_chunk)
            context[rows] = tile_context[index]
            if y is not None and tile_pooled is not None:
                y[rows, :POOLED_WIDTH] = tile_pooled[index].to(y)
    return context, y
