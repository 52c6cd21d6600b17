"""A memory model of the pack's tiled work, and the automatic tile choice built on it. Plain arithmetic, no torch.

Units: sizes in latent pixels (image pixels / 8) unless a name says ``px``; memory in bytes; ``dtype_bytes`` is
the size of one element of the compute dtype (4 fp32, 2 fp16/bf16).

Where the constants come from (ComfyUI 0.8.0 to 0.12.1, the same in both):

- UNet activations: ``BaseModel.memory_required`` in ``comfy/model_base.py``. With efficient attention (xformers
  or PyTorch's flash/memory-efficient SDPA, the default on CUDA) a call on a batch of ``b`` latents of ``h x w``
  needs ``b*h*w * dtype_bytes * 0.01 * factor`` MiB; without it (CPU, sub-quadratic attention)
  ``b*h*w * 0.15 * factor`` MiB. ``factor`` is ``memory_usage_factor`` in ``comfy/supported_models.py``: 0.8 for
  SDXL, 1.0 for SD 2.x. ComfyUI batches cond and uncond together only when ``1.5 x`` that estimate is below the
  free memory (``comfy/samplers.py``); the automatic choice keeps the same margin.
- What the pack adds to a model call, counted from the architectures: SUPIR's control trunk is a copy of the SDXL
  encoder half and runs before the UNet, so its transient peak is below the UNet's, but its outputs (one feature
  per encoder block and the middle block's, 1640 channels per latent pixel in all, :func:`held_channels`; the host
  tier counts them on the running trunk) stay alive through the UNet call;
  StableSR's time-aware encoder (a smaller half UNet, 256 channels at the first level) likewise hands the SPADE
  layers one 256-channel map per level (340 channels per latent pixel, :func:`encoder_feature_channels`).
- VAE: ``VAE.memory_used_encode`` / ``memory_used_decode`` in ``comfy/sd.py`` for the SD/SDXL KL autoencoder:
  1767 elements per image pixel to encode, 2178 x 64 per latent pixel to decode (NVIDIA; ComfyUI multiplies by
  2.73 on AMD).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MIB = 1024 * 1024
COMFY_MARGIN = 1.5  # comfy/samplers.py: batch conds only when memory_required * 1.5 < free memory
SDXL_FACTOR = 0.8  # comfy/supported_models.py, SDXL.memory_usage_factor
SD2_FACTOR = 1.0  # comfy/supported_models.py, SD20.memory_usage_factor (SD 2.1 and StableSR's UNet)
VAE_ENCODE_PER_PIXEL = 1767  # comfy/sd.py, memory_used_encode: elements per image pixel
VAE_DECODE_PER_LATENT = 2178 * 64  # comfy/sd.py, memory_used_decode: elements per latent pixel
TILE_STEP = 8  # candidate tiles are multiples of 8 latent pixels (64 px), the SD UNets' size multiple

SDXL_LEVELS = (320, 640, 1280)  # SDXL UNet widths per level, 2 ResBlocks each (the SUPIR trunk copies them)


def held_channels(widths: tuple[int, ...], blocks_per_level: int = 2) -> float:
    """Channels per latent pixel of the features a control trunk keeps for the UNet: the input convolution's
    output, each ResBlock's and each Downsample's, and the middle block's, at 1/4 of the pixels per level down.

    Example: ``held_channels(SDXL_LEVELS)`` is 320*3 + (320 + 640*2)/4 + (640 + 1280*3)/16 = 1640.
    """
    total, area = float(widths[0]), 1.0
    for level, width in enumerate(widths):
        total += blocks_per_level * width * area
        if level < len(widths) - 1:
            area /= 4
            total += width * area  # the Downsample keeps this level's width at the next level's size
    return total + widths[-1] * area  # the middle block


def encoder_feature_channels(feature_channels: int, levels: int) -> float:
    """Channels per latent pixel of StableSR's encoder features: one map of ``feature_channels`` per level (1/4 of
    the pixels per level down; at the last level's size the middle block's, which SPADE reads there).

    Example: ``encoder_feature_channels(256, 4)`` is 256 * (1 + 1/4 + 1/16 + 1/64) = 340.
    """
    return feature_channels * sum(4.0 ** -level for level in range(levels))


@dataclass(frozen=True)
class SamplingModel:
    """One family's model call: ComfyUI's ``memory_usage_factor`` and the channels per latent pixel the pack's
    control adds and holds during the UNet call."""
    name: str
    factor: float
    held_channels: float


SUPIR_SDXL = SamplingModel("SUPIR on SDXL", SDXL_FACTOR, held_channels(SDXL_LEVELS))
STABLESR_SD2 = SamplingModel("StableSR on SD 2.x", SD2_FACTOR, encoder_feature_channels(256, 4))


def unet_call_bytes(latent_pixels: int, batch: int, dtype_bytes: int, factor: float,
                    efficient_attention: bool = True) -> float:
    """ComfyUI's ``memory_required`` of one UNet call on ``batch`` latents of ``latent_pixels`` each, in bytes."""
    area = batch * latent_pixels
    per_pixel_mib = dtype_bytes * 0.01 * factor if efficient_attention else 0.15 * factor
    return area * per_pixel_mib * MIB


def sampling_call_bytes(model: SamplingModel, latent_pixels: int, batch: int, dtype_bytes: int,
                        efficient_attention: bool = True) -> float:
    """Predicted peak activation bytes of one sampling model call on ``batch`` tiles (cond and uncond counted as
    two) of ``latent_pixels`` each: the UNet's, plus the control's held features in the compute dtype."""
    held = batch * latent_pixels * model.held_channels * dtype_bytes
    return unet_call_bytes(latent_pixels, batch, dtype_bytes, model.factor, efficient_attention) + held


def vae_encode_bytes(image_pixels: int, dtype_bytes: int) -> float:
    """ComfyUI's ``memory_used_encode`` of the KL VAE on one image of ``image_pixels`` pixels, in bytes."""
    return VAE_ENCODE_PER_PIXEL * image_pixels * dtype_bytes


def vae_decode_bytes(latent_pixels: int, dtype_bytes: int) -> float:
    """ComfyUI's ``memory_used_decode`` of the KL VAE on one latent of ``latent_pixels`` pixels, in bytes."""
    return VAE_DECODE_PER_LATENT * latent_pixels * dtype_bytes


@dataclass(frozen=True)
class TileChoice:
    """The chosen tile side (latent pixels; covering the whole image when it is at least its longer side), the
    predicted peak in bytes with ComfyUI's margin, and the budget it was fitted to."""
    tile: int
    predicted: float
    budget: float

    @property
    def fits(self) -> bool:
        return self.predicted <= self.budget


def tile_candidates(height: int, width: int, smallest: int, largest: int | None = None,
                    whole_up_to: int | None = None) -> list[int]:
    """Tile sides to try, largest first: one covering the whole [height, width] latent (when its longer side is at
    most ``whole_up_to``, default any), then every multiple of :data:`TILE_STEP` from ``largest`` (default the
    longer side) down to ``smallest``."""
    top = max(height, width)
    if top <= smallest:
        return [smallest]
    whole = [top] if whole_up_to is None or top <= whole_up_to else []
    cap = top if largest is None else min(largest, top)
    steps = range(cap // TILE_STEP * TILE_STEP, smallest - 1, -TILE_STEP)
    return list(dict.fromkeys([*whole, *steps]))


def choose_tile(height: int, width: int, budget: float, peak: Callable[[int], float], smallest: int,
                largest: int | None = None, whole_up_to: int | None = None) -> TileChoice:
    """The largest tile (of :func:`tile_candidates`) whose ``peak(tile_pixels)`` (bytes, for a tile of
    ``min(tile, height) x min(tile, width)`` latent pixels) times ComfyUI's 1.5 margin fits ``budget`` bytes; when
    none does, the smallest (its ``fits`` is False, for the caller to say so).

    One tile per model call: the peak grows with the pixels of a call, so two tiles per call cost what one tile of
    twice the area does, which is more than the next size up (8 latent pixels more a side) from 24 latent pixels
    on; the larger tile also overlaps less. So the largest tile that fits is also the fastest choice.
    """
    for tile in tile_candidates(height, width, smallest, largest, whole_up_to):
        predicted = COMFY_MARGIN * peak(min(tile, height) * min(tile, width))
        if predicted <= budget:
            return TileChoice(tile, predicted, budget)
    return TileChoice(smallest, COMFY_MARGIN * peak(min(smallest, height) * min(smallest, width)), budget)


def workflow_peak_bytes(phases: list[tuple[float, float]]) -> float:
    """Predicted device peak of a workflow whose phases (text encoding, VAE encode, sampling, decode) run one
    after another, each given as (bytes of the weights it needs on the device, its predicted activation peak in
    bytes): the largest phase, as ComfyUI unloads idle models when the next phase needs their room. With memory to
    spare ComfyUI keeps them all loaded, and the peak is then every weight plus the largest activation peak."""
    return max(weights + activations for weights, activations in phases)
