"""Exact tiled VAE on ComfyUI's VAEs: tile-by-tile encode and decode that equal the whole-image VAE up to float
rounding (the maths, and what it costs, in ``tiling/exact_vae.py``), for image VAEs built from ComfyUI's
Encoder/Decoder."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import comfy.model_management
import comfy.ops
import comfy.utils
from comfy.ldm.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder

from ..tiling.exact_vae import tiled_exact


class UnsupportedVAEError(ValueError):
    """The VAE is not built from ComfyUI's 2-D Encoder/Decoder."""


def progress_bar() -> Callable[[int, int], None]:
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)
    return progress


def _autoencoder(vae):
    """The VAE's first-stage model, checked to be made of ComfyUI's 2-D Encoder and Decoder."""
    vae.throw_exception_if_invalid()
    model = vae.first_stage_model
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if not (isinstance(encoder, Encoder) and isinstance(decoder, Decoder)) or any(
            isinstance(m, nn.Conv3d) for m in model.modules()):
        raise UnsupportedVAEError("exact tiling supports image VAEs built from ComfyUI's Encoder/Decoder (SD, SDXL, "
                                  "Flux); use ComfyUI's tiled VAE (tiled_vae = comfy) for this one")
    return model


def encode_exact(vae, pixels: torch.Tensor, tile: int) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> latent [B, c, H/8, W/8] (unscaled, like VAE.encode), ``tile`` pixels per core."""
    model = _autoencoder(vae)
    ratio = vae.spacial_compression_encode()
    x = vae.process_input(vae.vae_encode_crop_pixels(pixels).movedim(-1, 1))
    core = max(ratio, tile // ratio * ratio)
    comfy.model_management.load_models_gpu([vae.patcher], memory_required=vae.memory_used_encode(
        (1, 3, core * 3, core * 3), vae.vae_dtype), force_full_load=vae.disable_offload)

    def forward(window):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return model.encode(window.to(vae.vae_dtype).to(vae.device)).to(vae.output_device).float()
    with torch.inference_mode():
        return tiled_exact(forward, model.encoder, x, core, ratio, torch.zeros(1, 3, 4 * ratio, 4 * ratio),
                           (AttnBlock,), comfy.ops.scaled_dot_product_attention, progress_bar())


def decode_exact(vae, latent: torch.Tensor, tile: int) -> torch.Tensor:
    """latent [B, c, h, w] -> IMAGE [B, 8h, 8w, 3], ``tile`` latent pixels per core."""
    model = _autoencoder(vae)
    comfy.model_management.load_models_gpu([vae.patcher], memory_required=vae.memory_used_decode(
        (1, latent.shape[1], tile * 3, tile * 3), vae.vae_dtype), force_full_load=vae.disable_offload)

    def forward(window):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return vae.process_output(model.decode(window.to(vae.vae_dtype).to(vae.device)).to(vae.output_device).float())
    with torch.inference_mode():
        probe = torch.zeros(1, latent.shape[1], 4, 4)
        return tiled_exact(forward, model.decoder, latent, max(1, tile), 1, probe, (AttnBlock,),
                           comfy.ops.scaled_dot_product_attention, progress_bar()).movedim(1, -1)
