"""The image crops a per-tile caption describes: the tiles of SUPIR Tiled Aggregation's grid (in latent pixels)
at image scale, in the same row-by-row order as the per-tile captions SUPIR Conditioning takes."""
from __future__ import annotations

import torch

from ..tiling.grid import tile_grid

LATENT_SCALE = 8  # image pixels per latent pixel (SD VAEs)


def tile_crops(image: torch.Tensor, tile: int, stride: int, grid: str = "snapped") -> list[torch.Tensor]:
    """IMAGE :math:`(B, H, W, C)` -> the crops :math:`(B, h, w, C)` of every aggregation tile, row by row;
    ``tile`` and ``stride`` in latent pixels (image pixels / 8), as the tiled aggregation uses them."""
    height, width = image.shape[1] // LATENT_SCALE, image.shape[2] // LATENT_SCALE
    return [image[:, t * LATENT_SCALE:b * LATENT_SCALE, l * LATENT_SCALE:r * LATENT_SCALE]
            for t, b, l, r in tile_grid(height, width, tile, stride, grid)]
