"""StableSR upscale in one call, built from the pack's parts as the official tiled script runs it: upscale the LR
image (at least one tile on its short side), encode it, StableSR Apply, tiled aggregation when the image is
larger than a tile, a preset restore, decode (CFW when a CFW file is given), colour fix against the upscaled LR
image, and resize to the exact target size."""
from __future__ import annotations

import torch

from ..image.colour import colour_fix
from ..image.io import as_rgb
from ..image.resize import resize_image, sampling_size, scaled_size
from ..stablesr.sampling import NEGATIVE_PROMPT, STABLESR_PRESETS
from ..tiling.grid import check_tile_pixels
from .auto_tiles import STABLESR_TILE
from .cfw_decode import CFWModel, cfw_decode
from .stablesr import StableSRModel, apply_stablesr
from .stablesr_restore import restore_stablesr, stablesr_conditioning
from .tiled_aggregation import apply_tiled_aggregation
from .upscale import COLOUR_FIX_CHOICES, latent_tiling

MULTIPLE = 64  # the SD 2.x UNet halves the latent three times
NATIVE_TILE = 8 * STABLESR_TILE  # px, StableSR's tile: with automatic tiles, small images are still upscaled to it


def stablesr_upscale(model, clip, vae, sr: StableSRModel, image: torch.Tensor, scale: float = 4.0,
                     preset: str = "DDPM 200 (official)", seed: int = 0, tile_size: int | None = 512,
                     tile_stride: int | None = 256,
                     colour: str = "adain", resize_method: str = "bicubic", cfw: CFWModel | None = None,
                     cfw_w: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B,H,W,C] -> (restored IMAGE [B, round(H*scale), round(W*scale), 3], the upscaled LR IMAGE it was
    restored from). Sizes in pixels. As the official script, an image whose short side would be below
    ``tile_size`` is upscaled further to one tile and resized down at the end. With ``cfw``, the decode is StableSR's
    CFW decode at fidelity weight ``cfw_w`` (the CFW file's VAE weights; tiles of ``tile_size`` when the image is
    larger than one). ``tile_size`` None: automatic, the largest tiles that fit the free memory (``auto_tiles.py``)
    for sampling and the CFW decode, with small images upscaled to at least :data:`NATIVE_TILE`."""
    if preset not in STABLESR_PRESETS:
        raise ValueError(f"preset '{preset}' is not one of {', '.join(STABLESR_PRESETS)}")
    if colour not in COLOUR_FIX_CHOICES:
        raise ValueError(f"colour fix '{colour}' is not one of {', '.join(COLOUR_FIX_CHOICES)}")
    if tile_size is not None:
        check_tile_pixels(tile_size, tile_stride)
    if tile_size is not None and tile_size % MULTIPLE:
        raise ValueError(f"tile_size ({tile_size} px) must be a multiple of {MULTIPLE} px for the SD 2.x UNet; "
                         f"512 is StableSR's own")
    height, width = image.shape[1:3]
    target = scaled_size(height, width, scale)
    sampling_scale = max(scale, (tile_size or NATIVE_TILE) / min(height, width))
    lr = resize_image(as_rgb(image), *sampling_size(height, width, sampling_scale, MULTIPLE), resize_method)
    lr_latent = vae.encode(lr)
    patched = apply_tiled_aggregation(apply_stablesr(model, sr, lr_latent), *latent_tiling(tile_size, tile_stride))
    positive, negative = stablesr_conditioning(clip, "", NEGATIVE_PROMPT)
    latent = restore_stablesr(patched, positive, negative, lr_latent, seed, STABLESR_PRESETS[preset])
    if cfw is not None:
        tiled = tile_size is None or max(lr.shape[1:3]) > tile_size
        restored = cfw_decode(cfw, vae, latent, lr, cfw_w, "cfw_file", tile_size if tiled else 0)
    else:
        restored = vae.decode(latent)
    if colour != "none":
        restored = colour_fix(restored, lr, colour)
    return resize_image(restored, *target, resize_method), lr
