"""Tiled aggregation as a model patch: a keyed APPLY_MODEL wrapper that runs the whole model call (c_in
scaling, SUPIR trunk and adaptors, UNet) per latent tile and blends the x0 predictions. It sits outside the
SUPIR patch, which reads the call's tile coordinates to slice its hint, and it works with every sampler
because CFG, restoration guidance and the sampler step all see the blended full-size prediction."""
from __future__ import annotations

import torch

import comfy.patcher_extension
import comfy.utils

from ..tiling.batching import batched, tile_conditioning
from ..tiling.grid import WEIGHTS, Tile, blend_tiles, check_tiling, tile_grid

TILED_AGGREGATION_KEY = "supir_tiled_aggregation"
TILES_KEY = "supir_tiles"  # transformer_options entry: ((full height, full width), tiles of this call)


def batched_like_call(latent: torch.Tensor, x: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """A whole-image conditioning latent [B, C, H, W] batched like this model call's ``x``: every cond/uncond
    chunk gets the same latents and, when tiled aggregation runs the call on tiles (stacked tile-major), each tile
    its slice."""
    tiles = (transformer_options.get(TILES_KEY) or (None, None))[1]
    chunks = len(transformer_options.get("cond_or_uncond", [0]))
    per_tile = x.shape[0] // len(tiles or [None])
    latent = comfy.utils.repeat_to_batch_size(latent, per_tile // chunks).repeat(chunks, 1, 1, 1)
    if tiles:
        latent = torch.cat([latent[:, :, a:b, c:d] for a, b, c, d in tiles])
    return latent.to(x.device)


class TiledAggregation:
    """Per-MODEL tiling settings (latent pixels; ``tile`` None: automatic, see :meth:`tiling`); deep copies return
    the same object."""

    def __init__(self, tile: int | None, stride: int | None, grid: str = "snapped", tile_batch_size: int = 1,
                 tile_context: torch.Tensor | None = None, tile_pooled: torch.Tensor | None = None,
                 weights: str = "official"):
        if tile is not None:
            check_tiling(tile, stride, grid)
        if tile_batch_size < 1:
            raise ValueError(f"tile_batch_size must be at least 1, got {tile_batch_size}")
        if weights not in WEIGHTS:
            raise ValueError(f"tile weights '{weights}' is not one of {', '.join(WEIGHTS)}")
        self.tile, self.stride, self.grid, self.tile_batch_size = tile, stride, grid, tile_batch_size
        self.weights = weights
        self.tile_context, self.tile_pooled = tile_context, tile_pooled
        self.auto_choices: dict[tuple, tuple[int, int, int]] = {}

    def __deepcopy__(self, memo):
        return self

    def tiling(self, executor, x: torch.Tensor, transformer_options: dict) -> tuple[int, int, int]:
        """(tile, stride, tiles per call) for this call: the settings, or when automatic the largest tile that fits
        the free memory, one per call (stride half the tile, as the nodes' defaults), chosen once per latent
        shape so that every step of a sampling uses the same tiles."""
        if self.tile is not None:
            return self.tile, self.stride, self.tile_batch_size
        key = (tuple(x.shape), x.device)
        if key not in self.auto_choices:
            from .auto_tiles import sampling_tile  # imported here: auto_tiles reads the control patches' keys
            choice = sampling_tile(*x.shape[-2:], x.shape[0], executor.class_obj, transformer_options, x.device)
            self.auto_choices[key] = (choice.tile, max(1, choice.tile // 2), 1)
        return self.auto_choices[key]

    def apply_model_wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        tile, stride, tile_batch_size = self.tiling(executor, x, transformer_options)
        tiles = tile_grid(x.shape[-2], x.shape[-1], tile, stride, self.grid)
        if len(tiles) == 1 and self.tile_context is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if self.tile_context is not None and len(self.tile_context) != len(tiles):
            raise ValueError(f"{len(self.tile_context)} tile captions for {len(tiles)} tiles of this "
                             f"{x.shape[-1] * 8}x{x.shape[-2] * 8} px image; give one caption line per tile "
                             f"(row by row) or none")
        batch = x.shape[0]
        chunks = transformer_options.get("cond_or_uncond", [0])

        def denoise(x_tiles: torch.Tensor, group: list[Tile]) -> torch.Tensor:
            k = len(group)
            tiled = {name: batched(value, batch, k) for name, value in kwargs.items()}
            context = batched(c_crossattn, batch, k)
            if self.tile_context is not None:
                context, tiled["y"] = tile_conditioning(context, tiled.get("y"), self.tile_context, self.tile_pooled,
                                                         group, tiles, chunks, batch)
            concat = None if c_concat is None else torch.cat([c_concat[:, :, a:b, c:d] for a, b, c, d in group])
            options = {**transformer_options, TILES_KEY: (tuple(x.shape[-2:]), group)}
            return executor(x_tiles, batched(t, batch, k), concat, context, control, options, **tiled)
        return blend_tiles(denoise, x, tiles, tile_batch_size, self.weights)


def apply_tiled_aggregation(model, tile: int | None, stride: int | None, grid: str = "snapped",
                            tile_batch_size: int = 1, tile_positive=None, weights: str = "official"):
    """A clone of ``model`` sampled tile by tile (sizes in latent pixels: image pixels / 8; ``tile`` None: the
    largest tile that fits the free memory, chosen at the first model call). ``tile_positive``:
    optional CONDITIONING with one entry per tile (row by row), e.g. SUPIR Conditioning with caption_per_line;
    ``weights``: the Gaussian tile weights' centring (``official`` as StableSR's and SUPIR's tiled samplers)."""
    context = pooled = None
    if tile_positive is not None:
        context, extra = tile_positive[0][0], tile_positive[0][1]
        pooled = extra.get("pooled_output")
    m = model.clone()
    patch = TiledAggregation(tile, stride, grid, tile_batch_size, context, pooled, weights)
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, TILED_AGGREGATION_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, TILED_AGGREGATION_KEY,
                           patch.apply_model_wrapper)
    return m
