"""A vision-language model under ComfyUI's model management: loaded in the dtype ComfyUI picks for the device,
moved to it only while it captions, and offloaded like any other model when sampling needs the memory."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils

from ..caption.model import VLM, caption_images, load_vlm

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class VLMModule(nn.Module):
    """Holds the transformers model, so the patcher's bookkeeping attributes land here and not on the model
    (whose ``device`` is a read-only property)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vlm = model


@dataclass
class ManagedVLM:
    patcher: object  # a ComfyUI ModelPatcher of a VLMModule
    vlm: VLM


def vlm_dtype(device: torch.device, weight_dtype: str = "auto") -> torch.dtype:
    """``weight_dtype``, or for ``auto`` bf16 where the device runs it well, else fp16 where it does, else fp32
    (the CPU: ComfyUI's own rule)."""
    if weight_dtype != "auto":
        if weight_dtype not in DTYPES:
            raise ValueError(f"weight_dtype '{weight_dtype}' is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[weight_dtype]
    if mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16 if mm.should_use_fp16(device) else torch.float32


def load_managed_vlm(path: str, weight_dtype: str = "auto") -> ManagedVLM:
    """The model folder ``path`` loaded on ComfyUI's offload device, managed by a ModelPatcher for its torch
    device."""
    load_device = mm.get_torch_device()
    vlm = load_vlm(path, vlm_dtype(load_device, weight_dtype))
    patcher = comfy.model_patcher.ModelPatcher(VLMModule(vlm.model), load_device=load_device,
                                               offload_device=mm.unet_offload_device())
    return ManagedVLM(patcher, vlm)


def caption_with_progress(managed: ManagedVLM, images: list[torch.Tensor], instruction: str, max_tokens: int,
                          seed: int | None) -> list[str]:
    """Captions of ``images`` (each :math:`(H, W, C)`), one at a time on the load device, with ComfyUI's progress
    bar (images done / total) and Cancel checked after each."""
    mm.load_models_gpu([managed.patcher], force_full_load=True)
    bar = comfy.utils.ProgressBar(len(images))

    def done(i: int) -> None:
        bar.update_absolute(i + 1, len(images))
        mm.throw_exception_if_processing_interrupted()
    return caption_images(managed.vlm, images, instruction, max_tokens, seed, done)
