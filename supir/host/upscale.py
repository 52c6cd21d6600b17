"""Upscale and restore in one call, built from the pack's parts: resize to the sampling size, stage-1 encode,
SUPIR Apply Control, SUPIR's prompts, tiled aggregation when the image is larger than a tile, a preset restore, decode,
colour fix against the stage-1 image, and resize to the exact target size."""
from __future__ import annotations

import torch

from ..image.colour import COLOUR_FIXES, colour_fix
from ..image.io import as_rgb
from ..image.resize import resize_image, sampling_size, scaled_size
from ..sampling.prompts import supir_conditioning
from ..sampling.samplers import RESTORE_PRESETS, StartMode
from ..tiling.grid import check_tile_pixels, check_vae_tile
from .auto_tiles import vae_tile
from .lq_encode import encode_lq
from .restore import restore_latent
from .supir_loader import SUPIRModel
from .tiled_aggregation import apply_tiled_aggregation
from .unet_patch import apply_supir

# the choices saved workflows hold first, in their order; methods added later are appended
COLOUR_FIX_CHOICES = ("wavelet", "adain", "none", *(m for m in COLOUR_FIXES if m not in ("wavelet", "adain")))


def upscale_and_restore(model, clip, vae, supir: SUPIRModel, image: torch.Tensor, scale: float = 2.0,
                        caption: str = "", preset: str = "Quality", seed: int = 0, control_scale_end: float = 1.0,
                        tile_size: int | None = 1024, tile_stride: int | None = 512, colour: str = "wavelet",
                        multiple: int = 64, resize_method: str = "lanczos",
                        vae_tile_size: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B,H,W,C] -> (restored IMAGE [B, round(H*scale), round(W*scale), 3], stage-1 IMAGE at the sampling
    size). Sizes in pixels; ``tile_size``/``tile_stride`` drive tiled aggregation (one tile when the image fits),
    ``vae_tile_size`` the VAE's tiles (0: whole image). None: automatic, the largest tiles that fit the free
    memory (``auto_tiles.py``)."""
    if preset not in RESTORE_PRESETS:
        raise ValueError(f"preset '{preset}' is not one of {', '.join(RESTORE_PRESETS)}")
    if colour not in COLOUR_FIX_CHOICES:
        raise ValueError(f"colour fix '{colour}' is not one of {', '.join(COLOUR_FIX_CHOICES)}")
    if tile_size is not None:
        check_tile_pixels(tile_size, tile_stride)
    if vae_tile_size is not None:
        check_vae_tile(vae_tile_size, "vae_tile_size")
    height, width = image.shape[1:3]
    target = scaled_size(height, width, scale)
    lq = resize_image(as_rgb(image), *sampling_size(height, width, scale, multiple), resize_method)
    hint, stage1 = encode_lq(supir, vae, lq, vae_tile_size)
    patched = apply_tiled_aggregation(apply_supir(model, supir, hint, 1.0, control_scale_end),
                                      *latent_tiling(tile_size, tile_stride))
    positive, negative = supir_conditioning(clip, caption, batch=image.shape[0])
    latent = restore_latent(patched, positive, negative, hint, seed, RESTORE_PRESETS[preset], StartMode())
    if vae_tile_size is None:
        vae_tile_size = vae_tile(vae, *latent.shape[-2:], encode=False, decode=True)
    if vae_tile_size:
        restored = vae.decode_tiled(latent, tile_x=vae_tile_size // 8, tile_y=vae_tile_size // 8,
                                    overlap=max(1, vae_tile_size // 64))
    else:
        restored = vae.decode(latent)
    if colour != "none":
        restored = colour_fix(restored, stage1, colour)
    return resize_image(restored, *target, resize_method), stage1


def latent_tiling(tile_size: int | None, tile_stride: int | None) -> tuple[int | None, int | None]:
    """Tile and stride in latent pixels from image pixels (None, automatic, stays None)."""
    return (None, None) if tile_size is None else (tile_size // 8, tile_stride // 8)
