"""Stage 1: the degradation-robust encode of the low-quality image.

The LQ VAE is the user's SDXL ``VAE`` with its encoder weights patched to SUPIR's denoise encoder (a patched
clone, as a LoRA'd model is), so stock VAE nodes work with it. The hint latent is the
posterior mode of the image in [-1, 1] (ComfyUI's KL VAEs encode to the mode); the stage-1 image is its decode.
"""
from __future__ import annotations

import copy
import torch

from ..image.io import as_rgb
from ..image.resize import snap_to_multiple
from ..model.checkpoint import SUPIRCheckpointError
from ..weights import check_layout
from .auto_tiles import vae_tile
from .supir_loader import SUPIRModel
from ..tiling.grid import check_vae_tile
from .tiled_vae import decode_exact, encode_exact

TILED_VAES = ("comfy", "exact")


def lq_vae(supir: SUPIRModel, vae):
    """``vae`` with SUPIR's denoise encoder: a clone of its patcher whose encoder weights are set to the denoise
    encoder's by weight patches, sharing the module and the decoder. Nothing is copied, and ComfyUI's memory
    management (its dynamic-VRAM mode included) loads it like any patched clone."""
    vae.throw_exception_if_invalid()
    encoder = getattr(vae.first_stage_model, "encoder", None)
    if encoder is None:
        raise SUPIRCheckpointError("this VAE has no convolutional encoder; SUPIR needs the SDXL VAE "
                                   "(from the SDXL checkpoint or sdxl_vae.safetensors)")
    check_layout({k: v.shape for k, v in encoder.state_dict().items()},
                 {k: v.shape for k, v in supir.denoise_encoder.items()},
                 "denoise encoder (compared with this VAE's encoder; SUPIR needs the SDXL VAE)", supir.name)
    out = copy.copy(vae)
    out.patcher = vae.patcher.clone()
    out.patcher.add_patches({f"encoder.{k}": ("set", (v,)) for k, v in supir.denoise_encoder.items()})
    return out


def encode_lq(supir: SUPIRModel, vae, image: torch.Tensor, tile_size: int | None = 0,
              tiled_vae: str = "comfy") -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the LQ ``image`` (IMAGE [B,H,W,C] in [0,1]) with the denoise encoder.
    Returns (hint latent samples [B,4,H/8,W/8], unscaled like every ComfyUI LATENT; stage-1 image [B,H,W,3]).
    ``tile_size`` (pixels: 0, or at least 64) above 0 encodes and decodes tile by tile, in memory bounded by the
    tile; None: the largest tile that fits the free memory (0, the whole image, when it fits;
    ``auto_tiles.vae_tile``). ``tiled_vae``: ``comfy`` is ComfyUI's tiled VAE (overlapping tiles averaged over three
    tilings; each tile is normalised with its own GroupNorm statistics and attends only to itself, so tiles whose
    content differs from the image's come out shifted); ``exact`` (``tiled_vae.py``) uses whole-image statistics
    and attention and equals the untiled encode and decode, at 10-20 times their time."""
    if tiled_vae not in TILED_VAES:
        raise ValueError(f"tiled_vae '{tiled_vae}' is not one of {', '.join(TILED_VAES)}")
    if tile_size is not None:
        check_vae_tile(tile_size)
    pixels = snap_to_multiple(as_rgb(image))
    encoder = lq_vae(supir, vae)
    if tile_size is None:
        tile_size = vae_tile(encoder, pixels.shape[1] // 8, pixels.shape[2] // 8, encode=True, decode=True)
    if tile_size == 0:
        latent = encoder.encode(pixels)
        return latent, encoder.decode(latent)
    if tiled_vae == "exact":
        latent = encode_exact(encoder, pixels, tile_size)
        return latent, decode_exact(encoder, latent, tile_size // 8)
    latent = encoder.encode_tiled(pixels, tile_x=tile_size, tile_y=tile_size, overlap=tile_size // 8)
    return latent, encoder.decode_tiled(latent, tile_x=tile_size // 8, tile_y=tile_size // 8,
                                        overlap=max(1, tile_size // 64))
