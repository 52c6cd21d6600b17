"""SUPIR on ComfyUI's own SDXL UNet, as patches on a cloned ModelPatcher.

- A keyed DIFFUSION_MODEL wrapper runs the control trunk once per UNet call, on the same c_in-scaled input,
  timestep, context and ``y``, with the hint repeated for every cond/uncond chunk, and hands the features to
  the patches below through that call's ``transformer_options``.
- An ``output_block_patch`` applies ZeroSFT at every decoder join (and, at output block 0, the middle-block
  ZeroSFT first); it returns the modulated tensor split at the main width, so the UNet's own
  ``cat([h, skip])`` rebuilds it exactly.
- ZeroCrossAttn runs before the Upsample of output blocks 2 and 5: an object patch gives those blocks a
  parameter-free slot layer in front of the Upsample (weight keys unchanged), and a
  ``forward_timestep_embed_patch`` handler runs the adaptor there.

The control scale is ``end + (start - end) * sigma / sigma_max`` at the step's pre-churn sigma (as the official
sampler computes it); at scale <= 0 the trunk is skipped and the UNet is plain SDXL.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

import comfy.patcher_extension
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, Upsample

from ..model.adaptors import Join, OutputBlock, SUPIRMismatchError, plan_adaptors, unet_config
from ..sampling.samplers import STEP_KEY, sigma_ramp
from .supir_loader import SUPIRModel
from .tiled_aggregation import TILES_KEY, batched_like_call
from .versions import has_core_supir

SUPIR_PATCH_KEY = "supir_restore"
HINT_KEY = "supir_hint"


CORE_SUPIR_CONFLICT = (
    "this MODEL carries ComfyUI's own SUPIR patch (core node 'Apply SUPIR Patch') as well as this pack's "
    "'SUPIR Apply Control': SUPIR would run twice and the two patches break each other's skip joins. Use one "
    "of the two: connect this pack's node to the MODEL from the checkpoint (or LoRA) loader, or use ComfyUI's "
    "core SUPIR nodes alone.")


class CrossAttnSlot(nn.Module):
    """Marks where a ZeroCrossAttn runs inside an output block; the patch handler does the work. ComfyUI
    restores object patches only when the model is fully unloaded, so a clone without SUPIR may still run
    through the slot: without the handler it is the identity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def output_blocks(unet: nn.Module) -> list[OutputBlock]:
    """The shapes of a ComfyUI UNetModel's output blocks, without the slot layers SUPIR adds."""
    shapes = []
    for block in unet.output_blocks:
        layers = [layer for layer in block if not isinstance(layer, CrossAttnSlot)]
        shapes.append(OutputBlock(layers[0].in_layers[0].num_channels, layers[0].out_channels,
                                  len(layers) == 3 and isinstance(layers[2], Upsample)))
    return shapes


class SUPIRPatch:
    """The per-MODEL SUPIR state shared by the wrapper and the patches. Deep copies (ModelPatcher.clone
    deep-copies model_options) return the same object, so clones never copy weights or the hint."""

    def __init__(self, supir: SUPIRModel, hint: torch.Tensor, scale_start: float, scale_end: float,
                 sigma_max: float, middle: int, joins: dict[int, Join]):
        self.supir = supir
        self.hint = hint
        self.scale_start = scale_start
        self.scale_end = scale_end
        self.sigma_max = sigma_max
        self.middle = middle
        self.joins = joins

    def __deepcopy__(self, memo):
        return self

    def control_scale(self, transformer_options: dict) -> float:
        """The ramp at the step's pre-churn sigma when a SUPIR sampler provides it, else at the call's sigma."""
        step = transformer_options.get(STEP_KEY)
        sigmas = transformer_options.get("sigmas")
        sigma = step["sigma"] if step else (self.sigma_max if sigmas is None else float(sigmas.max()))
        return sigma_ramp(sigma, self.sigma_max, self.scale_start, self.scale_end)

    def hint_for(self, x: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """The hint batched like ``x``: every cond/uncond chunk gets the same LQ latents; when tiled
        aggregation runs the call on tiles (stacked tile-major), each gets its slice of the hint. A call may
        bring its own (latent-format) hint under ``HINT_KEY``, as the LoRA trainer does with a fresh LQ per step."""
        size, tiles = transformer_options.get(TILES_KEY) or (tuple(x.shape[-2:]), None)
        hint = transformer_options.get(HINT_KEY, self.hint)
        if tuple(hint.shape[-2:]) != tuple(size):
            raise SUPIRMismatchError(
                f"the latent being sampled is {size[1] * 8}x{size[0] * 8} px but the SUPIR hint is "
                f"{hint.shape[-1] * 8}x{hint.shape[-2] * 8} px; sample a latent of the LQ image's size "
                f"(encode the same image, or use an Empty Latent of that size).")
        return batched_like_call(hint, x, transformer_options)

    def diffusion_model_wrapper(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        if has_core_supir(transformer_options):  # core's patch was added after this one
            raise SUPIRMismatchError(CORE_SUPIR_CONFLICT)
        scale = self.control_scale(transformer_options)
        if scale > 0:
            dtype = self.supir.compute_dtype
            with torch.no_grad():
                features = self.supir.control.control_model(
                    x.to(dtype), self.hint_for(x, transformer_options).to(dtype), timesteps, context.to(dtype),
                    y.to(dtype))
            transformer_options = {**transformer_options, SUPIR_PATCH_KEY: (features, scale)}
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    def output_block_patch(self, h, skip, transformer_options):
        state = transformer_options.get(SUPIR_PATCH_KEY)
        if state is None:
            return h, skip
        features, scale = state
        block = transformer_options["block"][1]
        modules = self.supir.control.project_modules
        if block == 0:
            h = modules[self.middle](features[-1].to(h.dtype), h, None, scale)
        join = self.joins[block]
        out = modules[join.sft](features[join.feature].to(h.dtype), skip, h, scale)
        return out[:, :h.shape[1]], out[:, h.shape[1]:]

    def cross_attn(self, layer, x, emb, context, transformer_options, *args):
        state = transformer_options.get(SUPIR_PATCH_KEY)
        if state is None:
            return x
        features, scale = state
        join = self.joins[transformer_options["block"][1]]
        return self.supir.control.project_modules[join.cross_attn](features[join.feature].to(x.dtype), x, scale)


def apply_supir(model, supir: SUPIRModel, hint_latent: torch.Tensor, scale_start: float = 1.0,
                scale_end: float = 1.0):
    """A clone of ``model`` (an SDXL ModelPatcher) restoring toward ``hint_latent`` (the raw LATENT samples
    from ``encode_lq``, [B,4,H/8,W/8]); the control network loads and offloads together with the UNet."""
    if SUPIR_PATCH_KEY in model.additional_models:
        raise SUPIRMismatchError("this MODEL already has SUPIR applied; connect SUPIR Apply Control to the model "
                                 "from the checkpoint loader (or LoRA loaders), not to another SUPIR Apply Control.")
    if has_core_supir(model.model_options.get("transformer_options", {})):
        raise SUPIRMismatchError(CORE_SUPIR_CONFLICT)
    unet = model.get_model_object("diffusion_model")
    middle, joins = plan_adaptors(unet_config(unet), output_blocks(unet), supir.control, supir.name)
    hint = model.get_model_object("latent_format").process_in(hint_latent.float())
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    patch = SUPIRPatch(supir, hint.cpu(), scale_start, scale_end, sigma_max, middle, joins)

    m = model.clone()
    m.set_additional_models(SUPIR_PATCH_KEY, [supir.patcher.clone()])
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, SUPIR_PATCH_KEY, patch.diffusion_model_wrapper)
    m.set_model_output_block_patch(patch.output_block_patch)
    m.set_model_forward_timestep_embed_patch((CrossAttnSlot, patch.cross_attn))
    for i, join in joins.items():
        if join.cross_attn is not None:
            name = f"diffusion_model.output_blocks.{i}"
            layers = [layer for layer in m.get_model_object(name) if not isinstance(layer, CrossAttnSlot)]
            m.add_object_patch(name, TimestepEmbedSequential(OrderedDict(
                [("0", layers[0]), ("1", layers[1]), ("supir_cross_attn", CrossAttnSlot()), ("2", layers[2])])))
    return m
