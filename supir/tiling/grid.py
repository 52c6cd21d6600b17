"""Progressive tiled aggregation (StableSR / MultiDiffusion / SUPIR's tiled samplers): at every model call the
latent is cut into overlapping tiles, each tile is denoised on its own, and the predictions are blended with
Gaussian weights (std = 0.1 x tile), accumulated in fp32 and divided by the summed weights. Blending the x0
predictions is the same as blending each tile's sampler step for Euler and DPM++ 2M, whose updates are linear
in the prediction, so any sampler works. Plain torch; the ComfyUI patch is in ``tiling_patch``."""
from __future__ import annotations

import math
from typing import Callable

import torch

Tile = tuple[int, int, int, int]  # (top, bottom, left, right) in latent pixels
GRIDS = ("snapped", "even")
WEIGHTS = ("official", "symmetric")


def check_tiling(tile: int, stride: int, grid: str) -> None:
    if not 0 < stride <= tile:
        raise ValueError(f"the stride ({stride}) must be positive and at most the tile size ({tile}), "
                         f"so that tiles overlap or touch")
    if grid not in GRIDS:
        raise ValueError(f"grid '{grid}' is not one of {', '.join(GRIDS)}")


MIN_TILE_PX = 64  # pixels: 8 latent pixels, the smallest tile of ComfyUI's own tiled VAE nodes


def check_tile_pixels(tile_size: int, tile_stride: int) -> None:
    """Tile size and stride as users type them, in image pixels (8 per latent pixel)."""
    if tile_size < MIN_TILE_PX:
        raise ValueError(f"tile_size ({tile_size} px) must be at least {MIN_TILE_PX} px (8 latent pixels); 1024 px, "
                         "SDXL's native size, is a good start")
    if not 8 <= tile_stride <= tile_size:
        raise ValueError(f"tile_stride ({tile_stride} px) must be between 8 px and tile_size ({tile_size} px) so that "
                         f"tiles overlap or touch; e.g. tile_stride {max(8, tile_size // 2)} px")


def check_vae_tile(tile_size: int, what: str = "tile_size") -> None:
    """A tiled VAE's tile size in image pixels, ``what`` naming the input: 0 (the whole image at once) or at least
    :data:`MIN_TILE_PX`. Smaller tiles fail inside the VAE or take many times the untiled time."""
    if tile_size != 0 and tile_size < MIN_TILE_PX:
        raise ValueError(f"{what} ({tile_size} px) must be 0 (the whole image at once) or at least {MIN_TILE_PX} px; "
                         "512 px is a good start")


def tile_starts(size: int, tile: int, stride: int, grid: str = "snapped") -> list[int]:
    """Start offsets along one axis of length ``size``. ``snapped``: every ``stride`` from 0, plus a last tile
    flush with the far border (StableSR/SUPIR). ``even``: the fewest tiles at most ``stride`` apart, spread
    evenly (TiledDiffusion). A tile longer than the axis becomes one tile of the axis' length."""
    check_tiling(tile, stride, grid)
    if tile >= size:
        return [0]
    if grid == "snapped":
        starts = list(range(0, size - tile + 1, stride))
        return starts if starts[-1] == size - tile else starts + [size - tile]
    count = math.ceil((size - tile) / stride) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, stride: int, grid: str = "snapped") -> list[Tile]:
    """Tiles covering a [height, width] latent, row by row."""
    th, tw = min(tile, height), min(tile, width)
    return [(y, y + th, x, x + tw) for y in tile_starts(height, tile, stride, grid)
            for x in tile_starts(width, tile, stride, grid)]


def gaussian_weights(height: int, width: int, std_fraction: float = 0.1, centring: str = "official") -> torch.Tensor:
    """Separable Gaussian tile weights [height, width] (fp32): exp(-(i - m)^2 / (2 (std_fraction N)^2)) per
    axis; the edge weight is about exp(-12.5) of the centre. ``official``: the centres of StableSR's and
    SUPIR's tiled samplers, m = (W - 1) / 2 across and m = H / 2 down (half a pixel low); ``symmetric``:
    m = (N - 1) / 2 on both axes. The half pixel scales an overlap's relative weights by
    exp(50 stride / N^2) down the image: x1.22 at 128/64 latent tiles, x4.8 at 16/8."""
    if centring not in WEIGHTS:
        raise ValueError(f"tile weights '{centring}' is not one of {', '.join(WEIGHTS)}")

    def axis(n, midpoint):
        i = torch.arange(n, dtype=torch.float32)
        return torch.exp(-((i - midpoint) ** 2) / (2 * (std_fraction * n) ** 2))
    down = height / 2 if centring == "official" else (height - 1) / 2
    return axis(height, down)[:, None] * axis(width, (width - 1) / 2)[None, :]


def blend_tiles(denoise: Callable[[torch.Tensor, list[Tile]], torch.Tensor], x: torch.Tensor, tiles: list[Tile],
                tile_batch_size: int = 1, weights: str = "official", scale: int = 1) -> torch.Tensor:
    """Denoise ``x`` [B,C,H,W] tile by tile and blend. ``denoise(x_tiles, tiles)`` gets up to
    ``tile_batch_size`` tiles of one size stacked along the batch ([k*B,C,h,w], tile-major) and returns
    predictions [k*B,C',h*scale,w*scale] (``scale`` 1 for a denoiser, 8 for a VAE decode); ``weights``: the
    :func:`gaussian_weights` centring, at the predictions' size. Returns the weighted average
    [B,C',H*scale,W*scale] in ``x``'s dtype, on the predictions' device."""
    if tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be at least 1, got {tile_batch_size}")
    if weights not in WEIGHTS:
        raise ValueError(f"tile weights '{weights}' is not one of {', '.join(WEIGHTS)}")
    b, height, width = x.shape[0], x.shape[-2] * scale, x.shape[-1] * scale
    total = weight_sum = None
    cache = {}
    for start in range(0, len(tiles), tile_batch_size):
        group = tiles[start:start + tile_batch_size]
        out = denoise(torch.cat([x[:, :, t:bt, l:r] for t, bt, l, r in group]), group)
        if total is None:
            total = torch.zeros((b, out.shape[1], height, width), dtype=torch.float32, device=out.device)
            weight_sum = torch.zeros((1, 1, height, width), dtype=torch.float32, device=out.device)
        for k, tile in enumerate(group):
            t, bt, l, r = (scale * n for n in tile)
            w = cache.get((bt - t, r - l))
            if w is None:
                w = cache[(bt - t, r - l)] = gaussian_weights(bt - t, r - l, centring=weights).to(out.device)
            total[:, :, t:bt, l:r] += out[k * b:(k + 1) * b].float() * w
            weight_sum[:, :, t:bt, l:r] += w
    return (total / weight_sum).to(x.dtype)
