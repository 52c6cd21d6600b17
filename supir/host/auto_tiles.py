"""Automatic tile sizes: the largest tile whose peak, predicted by ``tiling/memory.py``, fits
ComfyUI's free-memory estimate for the device, as ComfyUI's own VAE batching and cond batching reason: free memory
from ``model_management.get_free_memory`` less the weights still to be loaded there and ComfyUI's reserve. Sampling
tiles are at most the official ones (SUPIR's and StableSR's tiled settings), which quality, not memory, sets."""
from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.patcher_extension

from ..tiling.memory import (STABLESR_SD2, SUPIR_SDXL, SamplingModel, TileChoice, choose_tile, sampling_call_bytes,
                             vae_decode_bytes, vae_encode_bytes)

TILES_CHOICES = ("auto", "manual")
SAMPLING_SMALLEST = {SUPIR_SDXL.name: 64, STABLESR_SD2.name: 32}  # latent px: 512 px for SDXL, 256 for SD 2.x
# The largest sampling tiles are the official ones, for quality rather than memory: SUPIR_v0_tiled.yaml samples
# 128-latent tiles (1024 px) and the official untiled SUPIR the whole image at any size; StableSR's scripts always
# sample 64-latent tiles (96 for the 768-v model), the whole image only when it is one tile.
SUPIR_TILE, STABLESR_TILE, STABLESR_V_TILE = 128, 64, 96
VAE_SMALLEST = 32  # latent px (256 px)
GIB = 1024 ** 3


def check_tiles(tiles: str) -> None:
    if tiles not in TILES_CHOICES:
        raise ValueError(f"tiles '{tiles}' is not one of {', '.join(TILES_CHOICES)}")


def memory_budget(device, patchers=()) -> float:
    """Bytes free for activations on ``device``: ComfyUI's free-memory estimate, less the part of each patcher's
    weights not yet on ``device`` (none when its weights never move, as on the CPU) and ComfyUI's reserve."""
    to_load = sum(p.model_size() - p.loaded_size() for p in patchers if p.load_device != p.offload_device)
    return mm.get_free_memory(device) - to_load - mm.extra_reserved_memory()


def efficient_attention() -> bool:
    """Whether ComfyUI counts attention as linear in the tokens (xformers or PyTorch's flash SDPA), as
    ``BaseModel.memory_required`` asks."""
    return bool(mm.xformers_enabled() or mm.pytorch_attention_flash_attention())


def control_family(transformer_options: dict) -> SamplingModel | None:
    """SUPIR or StableSR, from the control wrapper in this model call's options (None: a plain UNet)."""
    from .stablesr import STABLESR_PATCH_KEY  # imported here: both modules import tiled_aggregation
    from .unet_patch import SUPIR_PATCH_KEY
    wrappers = transformer_options.get("wrappers", {}).get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    if SUPIR_PATCH_KEY in wrappers:
        return SUPIR_SDXL
    if STABLESR_PATCH_KEY in wrappers:
        return STABLESR_SD2
    return None


def sampling_tile(height: int, width: int, call_batch: int, base_model, transformer_options: dict,
                  device) -> TileChoice:
    """The tile (latent px) for a model call of ``call_batch`` latents (cond and uncond chunks times the image
    batch) on a [height, width] latent, with the model already loaded (ComfyUI loads it before sampling, so the
    free memory is what the call can use)."""
    family = control_family(transformer_options)
    dtype = base_model.manual_cast_dtype or base_model.get_dtype()
    size, attention = mm.dtype_size(dtype), efficient_attention()
    extra = family or SamplingModel("plain UNet", base_model.memory_usage_factor, 0.0)
    model = SamplingModel(extra.name, base_model.memory_usage_factor, extra.held_channels)

    def peak(latent_pixels: int) -> float:
        return sampling_call_bytes(model, latent_pixels, call_batch, size, attention)

    largest, whole_up_to = official_tile_limits(family, base_model)
    choice = choose_tile(height, width, memory_budget(device), peak, SAMPLING_SMALLEST.get(model.name, 32), largest,
                         whole_up_to)
    report(f"{model.name} sampling", choice, height, width)
    return choice


def official_tile_limits(family: SamplingModel | None, base_model) -> tuple[int | None, int | None]:
    """(largest tile, whole image up to) in latent px for sampling ``family`` on ``base_model``; None: no limit."""
    if family is SUPIR_SDXL:
        return SUPIR_TILE, None
    if family is STABLESR_SD2:
        from comfy.model_base import ModelType  # here: model_base imports torchvision, the memory table does not
        tile = STABLESR_V_TILE if base_model.model_type == ModelType.V_PREDICTION else STABLESR_TILE
        return tile, tile
    return None, None


def vae_tile(vae, height: int, width: int, encode: bool, decode: bool, patchers=()) -> int:
    """The VAE tile in image pixels (0: the whole image) for a [height, width] latent encoded and/or decoded by
    ``vae`` (a ComfyUI VAE; ``patchers``: other models on the same call, e.g. CFW's)."""
    size = mm.dtype_size(vae.vae_dtype)

    def peak(latent_pixels: int) -> float:
        return ((vae_encode_bytes(64 * latent_pixels, size) if encode else 0.0)
                    + (vae_decode_bytes(latent_pixels, size) if decode else 0.0))

    budget = memory_budget(vae.device, [vae.patcher, *patchers])
    choice = choose_tile(height, width, budget, peak, VAE_SMALLEST)
    report("VAE", choice, height, width)
    return 0 if choice.tile >= max(height, width) else 8 * choice.tile


def report(what: str, choice: TileChoice, height: int, width: int) -> None:
    """Logs the choice and why, in image pixels and GiB."""
    whole = choice.tile >= max(height, width)
    tile = f"the whole {8 * width}x{8 * height} px image" if whole else f"{8 * choice.tile} px tiles"
    why = (f"predicted {choice.predicted / GIB:.2f} GiB of {choice.budget / GIB:.2f} GiB free" if choice.fits else
           f"even the smallest tile is predicted to need {choice.predicted / GIB:.2f} GiB, above the "
           f"{choice.budget / GIB:.2f} GiB free; ComfyUI will offload weights or run out of memory")
    logging.info("SUPIR auto tiles (%s): %s; %s", what, tile, why)
