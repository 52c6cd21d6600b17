"""Loading a SUPIR file into ComfyUI: the control network as a ModelPatcher built on ComfyUI's ops (so fp8/fp16
storage up-casts at compute and low-VRAM partial loading works) plus the denoise-encoder weights."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import comfy.model_management as mm
import comfy.ops
import comfy.ldm.modules.attention as comfy_attention

from ..model.checkpoint import load_supir_weights
from ..model.control import SUPIRControl
from ..weights import STORAGE_DTYPES
from .versions import core_model_patcher



def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """ComfyUI's attention backend (xformers, SDPA, split, ...) as chosen at start-up."""
    return comfy_attention.optimized_attention(q, k, v, heads)


@dataclass
class SUPIRModel:
    """A loaded SUPIR file: the control network (trunk + adaptors) managed by ComfyUI, and the denoise
    encoder's weights, which become the encoder of an LQ VAE (see ``lq_encode``)."""
    patcher: object  # a ComfyUI ModelPatcher (the dynamic-VRAM one where ComfyUI uses it)
    denoise_encoder: dict
    compute_dtype: torch.dtype
    name: str

    @property
    def control(self) -> SUPIRControl:
        return self.patcher.model


def managed_network(build: Callable[..., nn.Module], weights: dict[str, torch.Tensor],
                    weight_dtype: str = "auto"):
    """A network of the pack's own (built by ``build(ops=, dtype=, device="meta")``) loaded with ``weights`` under
    ComfyUI's model management, on ComfyUI's ops so fp8/fp16 storage up-casts at compute and low-VRAM partial
    loading works. ``weight_dtype``: ``auto`` (ComfyUI's choice for the device), ``fp32``, ``fp16``, ``bf16`` or
    ``fp8_e4m3fn``. Returns (ModelPatcher, compute dtype)."""
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    if weight_dtype == "auto":
        dtype = mm.unet_dtype(load_device, model_params=sum(t.numel() for t in weights.values()))
    elif weight_dtype in STORAGE_DTYPES:
        dtype = STORAGE_DTYPES[weight_dtype]
    else:
        raise ValueError(f"weight_dtype '{weight_dtype}' is not one of auto, {', '.join(STORAGE_DTYPES)}")
    compute_dtype = mm.unet_manual_cast(dtype, load_device) or dtype
    net = build(ops=comfy.ops.pick_operations(dtype, compute_dtype, load_device=load_device), dtype=dtype,
                device="meta")
    patcher = core_model_patcher()(net, load_device=load_device, offload_device=offload_device)
    net.load_state_dict({k: v.to(offload_device, dtype) for k, v in weights.items()}, strict=True, assign=True)
    if mm.force_channels_last():  # the layout ComfyUI gives its UNet's weights (--force-channels-last)
        net.to(memory_format=torch.channels_last)
    net.eval().requires_grad_(False)
    return patcher, compute_dtype


def load_supir(path: str, weight_dtype: str = "auto") -> SUPIRModel:
    """Load and validate a SUPIR checkpoint; ``weight_dtype`` as :func:`managed_network` (storage; compute is
    up-cast as ComfyUI does for UNets)."""
    weights, layout = load_supir_weights(path, STORAGE_DTYPES.get(weight_dtype))
    patcher, compute_dtype = managed_network(
        lambda **kw: SUPIRControl(layout.trunk_config, layout.adaptor_specs, attention=host_attention, **kw),
        weights.control, weight_dtype)
    # copies of the denoise encoder's tensors (34M parameters): views into a memory-mapped file would keep the
    # whole file mapped, and its pages resident, after the control network has been converted to another dtype
    denoise_encoder = {k: v.clone() for k, v in weights.denoise_encoder.items()}
    return SUPIRModel(patcher, denoise_encoder, compute_dtype, os.path.basename(path))
