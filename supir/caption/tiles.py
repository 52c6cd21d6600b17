"""The image crops a per-tile caption describes: the tiles of SUPIR Tiled Aggregation's grid (in latent pixels)
at image scale, in the same row-by-row order as the per-tile captions SUPIR Conditioning takes."""
from __future__ import annotations

import torch

from ..tiling.grid import tile_grid

LATENT_SCALE = 8  # image pixels per latent pixel (SD VAEs)


def tile_crops(image: torch.Tensor, tile: int, stride: int, grid: str = "snapped",
               latent_size: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """IMAGE :math:`(B, H, W, C)` -> the crops :math:`(B, h, w, C)` of every aggregation tile, row by row;
    ``tile`` and ``stride`` in latent pixels, as the tiled aggregation uses them, on ``latent_size`` (the hint's
    height and width; by default the image's size / 8, an SD VAE's latent).

    Raises:
        ValueError: the image is not a whole multiple of the latent, the same on both sides.
    """
    height, width = image.shape[1:3]
    rows, cols = latent_size or (height // LATENT_SCALE, width // LATENT_SCALE)
    scale = height // rows if rows else 0
    if not scale or (rows * scale, cols * scale) != (height, width):
        raise ValueError(f"the image ({width}x{height} px) is not a whole multiple of the latent the aggregation "
                         f"tiles ({cols}x{rows}); give the image at the size it is restored at (SUPIR Resize For "
                         f"Restore's image, sides a multiple of {LATENT_SCALE} px) and that image's hint")
    return [image[:, t * scale:b * scale, l * scale:r * scale] for t, b, l, r in tile_grid(rows, cols, tile, stride,
                                                                                          grid)]
