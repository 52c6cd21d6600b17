"""LoRA on ComfyUI's side: apply a LoRA stack through ComfyUI's patching, merge LoRAs into one file, bake a
stack into an SDXL checkpoint. Files are written only under ComfyUI's output directory."""
from __future__ import annotations

import json
import logging
import os

import torch

import comfy.lora
import comfy.model_management
import comfy.utils
import comfy.weight_adapter
import folder_paths

from ..lora.formats import LoraFormatError, convert_peft, merge_low_rank, to_kohya
from ..lora.matching import LISTED_IGNORED, LoraMismatchError, LoraResult, fits, mismatch_message, model_modules, \
    module_of

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def lora_key_map(model, clip=None) -> dict[str, str]:
    """ComfyUI's map from LoRA module names to weight keys of ``model`` (a ModelPatcher) and ``clip``."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    return key_map


def weight_shapes(model, clip=None) -> dict[str, torch.Size]:
    """Shapes of every weight of ``model`` and ``clip`` by ComfyUI key."""
    shapes = {k: v.shape for k, v in model.model.state_dict().items()}
    if clip is not None:
        shapes.update((k, v.shape) for k, v in clip.cond_stage_model.state_dict().items())
    return shapes


def patch_fits(patch, shape: torch.Size) -> bool:
    """:func:`fits` for a plain up/down LoRA patch; other adapters (LyCORIS, Tucker, reshaped) are left to ComfyUI."""
    if not isinstance(patch, comfy.weight_adapter.LoRAAdapter):
        return True
    up, down, _, mid, _, reshape = patch.weights
    return mid is not None or reshape is not None or fits(up, down, shape)


def apply_lora(model, clip, sd: dict[str, torch.Tensor], name: str, strength: float):
    """Clones ``model`` (and ``clip`` when given) and adds the LoRA's patches at ``strength`` through
    comfy.lora.load_lora; PEFT UNet names are converted first. Returns (model, clip, LoraResult); raises
    LoraMismatchError when nothing applies."""
    converted = convert_peft(sd)
    key_map = lora_key_map(model, clip)
    patches = comfy.lora.load_lora(converted, key_map, log_missing=False)
    shapes = weight_shapes(model, clip)
    wrong_shape = {k for k, patch in patches.items() if k in shapes and not patch_fits(patch, shapes[k])}
    patches = {k: patch for k, patch in patches.items() if k not in wrong_shape}
    model = model.clone()
    unet_keys = set(model.add_patches(patches, strength))
    clip_keys = set()
    if clip is not None:
        clip = clip.clone()
        clip_keys = set(clip.add_patches(patches, strength))
    patched = unet_keys | clip_keys
    if not patched:
        raise LoraMismatchError(mismatch_message(name, sd, clip is not None))
    ignored = []
    for key in converted:
        module = module_of(key, key_map)
        target = key_map.get(module) if module else None
        if not (isinstance(target, str) and (target in patched or target[:-len("weight")] + "bias" in patched)):
            ignored.append(key)
    result = LoraResult(name, strength, len(converted) - len(ignored), ignored, len(unet_keys), len(clip_keys),
                        len(wrong_shape))
    logging.info("SUPIR LoRA: %s", result.describe())
    if ignored:
        logging.warning("SUPIR LoRA %s: %d tensors ignored (no matching layer): %s", name, len(ignored),
                        ", ".join(ignored[:LISTED_IGNORED]))
    return model, clip, result


def apply_lora_stack(model, clip, stack: list[tuple[str, dict[str, torch.Tensor], float]]):
    """Applies (name, tensors, strength) in order; strength 0 skips a LoRA. Returns (model, clip, report text)."""
    lines = []
    for name, sd, strength in stack:
        if strength == 0:
            lines.append(f"{name}: skipped (strength 0)")
            continue
        model, clip, result = apply_lora(model, clip, sd, name, strength)
        lines.append(result.describe())
    if clip is None:
        lines.append("no CLIP connected: text-encoder tensors, if any, are ignored")
    return model, clip, "\n".join(lines) or "no LoRA selected"


def merge_loras(model, clip, stack: list[tuple[str, dict[str, torch.Tensor], float]], rank: int,
                dtype: torch.dtype = torch.float16) -> tuple[dict[str, torch.Tensor], str]:
    """Merges (name, tensors, weight) LoRAs into one kohya-format state dict of at most ``rank`` per layer, names
    resolved against ``model``/``clip``. Returns (state dict, report)."""
    if not stack:
        raise LoraFormatError("no LoRA to merge: select at least one LoRA with a non-zero weight.")
    key_map = lora_key_map(model, clip)
    shapes = weight_shapes(model, clip)
    lines, terms = [], []
    for name, sd, weight in stack:
        modules, skipped = model_modules(sd, name, key_map, shapes)
        terms.append((modules, weight))
        lines.append(f"{name}: weight {weight:g}, {len(modules)} layers" +
                     (f", {skipped} modules fit no layer of this model and were left out" if skipped else ""))
    merged = merge_low_rank(terms, rank)
    report = "\n".join([*lines, f"merged: {len(merged)} layers at rank ≤ {rank}"])
    return to_kohya(merged, dtype), report


def output_path(filename_prefix: str) -> str:
    """A new file path under ComfyUI's output directory (ComfyUI refuses prefixes that leave it)."""
    folder, filename, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                        folder_paths.get_output_directory())
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{filename}_{counter:05}_.safetensors")


def save_merged_lora(sd: dict[str, torch.Tensor], filename_prefix: str, sources: list[tuple[str, float]]) -> str:
    """Writes a merged LoRA under the output directory with its sources in the metadata; returns the path."""
    path = output_path(filename_prefix)
    comfy.utils.save_torch_file(sd, path, metadata={"supir_restore_merged_from": json.dumps(sources)})
    return path


def checkpoint_state_dict(model, clip, vae) -> dict[str, torch.Tensor]:
    """``model`` (its patches merged into the weights), ``clip`` and ``vae`` in one checkpoint's key layout.
    Gathered part by part because ``comfy.sd.save_checkpoint`` of ComfyUI 0.12 drops the text encoders and the
    VAE (its ``ModelPatcher.state_dict_for_saving`` ignores them)."""
    if hasattr(model, "state_dict_for_saving"):  # ComfyUI 0.12 on: patched weights are computed as they are read
        comfy.model_management.load_models_gpu([model, clip.load_model()])
        sd = model.state_dict_for_saving()
    else:
        comfy.model_management.load_models_gpu([model, clip.load_model()], force_patch_weights=True)
        sd = model.model.state_dict_for_saving()
    config = model.model.model_config
    sd.update(config.process_clip_state_dict_for_saving(clip.get_sd()))
    sd.update(config.process_vae_state_dict_for_saving(vae.get_sd()))
    return {k: v.contiguous() for k, v in sd.items()}


def bake_checkpoint(model, clip, vae, filename_prefix: str) -> str:
    """Saves ``model`` (with its LoRA patches merged into the weights), ``clip`` and ``vae`` as one SDXL checkpoint
    under the output directory; returns the path."""
    path = output_path(filename_prefix)
    comfy.utils.save_torch_file(checkpoint_state_dict(model, clip, vae), path)
    return path
