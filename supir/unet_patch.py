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
from dataclasses import dataclass

import torch
from torch import nn

import comfy.patcher_extension
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, Upsample

from .comfy_versions import has_core_supir
from .loader import SUPIRModel
from .model import CrossAttnSpec, SFTSpec, SUPIRControl
from .sampling import STEP_KEY, sigma_ramp
from .tiling_patch import TILES_KEY

KEY = "supir_restore"
HINT_KEY = "supir_hint"


class SUPIRMismatchError(ValueError):
    """The SUPIR file does not fit the MODEL it is applied to."""


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


@dataclass(frozen=True)
class Join:
    """Adaptors of one output block: ZeroSFT index, optional ZeroCrossAttn index, trunk feature index."""
    sft: int
    cross_attn: int | None
    feature: int


def plan_adaptors(unet: nn.Module, control: SUPIRControl, name: str) -> tuple[int, dict[int, Join]]:
    """Map SUPIR's adaptors onto ``unet``'s output blocks in SUPIR's order (indices fall from the last
    adaptor and the last trunk feature), checking every width. Returns (middle ZeroSFT index, joins)."""
    specs = control.adaptor_specs
    trunk = control.trunk_config
    feature_channels = trunk.feature_channels
    unet_cfg = _unet_config(unet)
    supir_cfg = trunk.unet_config()
    diffs = [f"{k}: SUPIR {supir_cfg[k]} vs MODEL {unet_cfg.get(k)}" for k in supir_cfg if supir_cfg[k] != unet_cfg.get(k)]
    if diffs:
        kind = "an SD1.x/SD2.x" if unet_cfg.get("adm_in_channels") is None else "a different"
        raise SUPIRMismatchError(
            f"{name} does not fit this MODEL ({kind} UNet): " + "; ".join(diffs)
            + ". SUPIR needs an SDXL model (base, Juggernaut, Lightning…); load one with Load Checkpoint.")

    def want(index: int, kind: type, **widths):
        spec = specs[index] if 0 <= index < len(specs) else None
        got = {k: getattr(spec, k) for k in widths} if isinstance(spec, kind) else None
        if got != widths:
            raise SUPIRMismatchError(f"{name}: project_modules.{index} is {spec}, but this MODEL needs a "
                                     f"{kind.__name__} with {widths}. The SUPIR file and the UNet do not match.")

    a, feat = len(specs) - 1, len(feature_channels) - 1
    mid_width = feature_channels[-1]
    want(a, SFTSpec, control_channels=mid_width, skip_channels=mid_width, main_channels=0)
    middle, joins = a, {}
    a, feat = a - 1, feat - 1
    for i, block in enumerate(unet.output_blocks):
        block = [layer for layer in block if not isinstance(layer, CrossAttnSlot)]
        width = block[0].in_layers[0].num_channels
        skip = feature_channels[feat]
        want(a, SFTSpec, control_channels=feature_channels[feat], skip_channels=skip, main_channels=width - skip)
        sft, a = a, a - 1
        cross = None
        if len(block) == 3 and isinstance(block[2], Upsample):
            want(a, CrossAttnSpec, control_channels=feature_channels[feat], query_channels=block[0].out_channels)
            cross, a = a, a - 1
        joins[i] = Join(sft, cross, feat)
        feat -= 1
    if a != -1 or feat != -1:
        raise SUPIRMismatchError(f"{name}: {a + 1} adaptor(s) or {feat + 1} trunk feature(s) left unused; "
                                 "the SUPIR file and the UNet do not match.")
    return middle, joins


def _unet_config(unet: nn.Module) -> dict:
    """Shape of a ComfyUI UNetModel in the vocabulary of ``TrunkConfig.unet_config``."""
    cfg = {"in_channels": unet.in_channels, "model_channels": unet.model_channels,
           "channel_mult": tuple(unet.channel_mult), "num_res_blocks": tuple(unet.num_res_blocks),
           "context_dim": None, "adm_in_channels": None, "transformer_depth_middle": 0}
    depths = []
    for block in unet.input_blocks[1:]:
        if len(block) and hasattr(block[0], "in_layers"):
            depths.append(len(block[1].transformer_blocks) if len(block) > 1 else 0)
    cfg["transformer_depth"] = tuple(depths)
    if unet.middle_block is not None and len(unet.middle_block) > 2:
        cfg["transformer_depth_middle"] = len(unet.middle_block[1].transformer_blocks)
    for m in unet.modules():
        if hasattr(m, "attn2"):
            cfg["context_dim"] = m.attn2.to_k.in_features
            break
    if getattr(unet, "num_classes", None) == "sequential":
        cfg["adm_in_channels"] = unet.label_emb[0][0].in_features
    return cfg


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
        chunks = len(transformer_options.get("cond_or_uncond", [0]))
        per_tile = x.shape[0] // len(tiles or [None])
        hint = comfy.utils.repeat_to_batch_size(hint, per_tile // chunks).repeat(chunks, 1, 1, 1)
        if tiles:
            hint = torch.cat([hint[:, :, a:b, c:d] for a, b, c, d in tiles])
        return hint.to(x.device)

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
            transformer_options = {**transformer_options, KEY: (features, scale)}
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    def output_block_patch(self, h, skip, transformer_options):
        state = transformer_options.get(KEY)
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
        state = transformer_options.get(KEY)
        if state is None:
            return x
        features, scale = state
        join = self.joins[transformer_options["block"][1]]
        return self.supir.control.project_modules[join.cross_attn](features[join.feature].to(x.dtype), x, scale)


def apply_supir(model, supir: SUPIRModel, hint_latent: torch.Tensor, scale_start: float = 1.0,
                scale_end: float = 1.0):
    """A clone of ``model`` (an SDXL ModelPatcher) restoring toward ``hint_latent`` (the raw LATENT samples
    from ``encode_lq``, [B,4,H/8,W/8]); the control network loads and offloads together with the UNet."""
    if KEY in model.additional_models:
        raise SUPIRMismatchError("this MODEL already has SUPIR applied; connect SUPIR Apply Control to the model "
                                 "from the checkpoint loader (or LoRA loaders), not to another SUPIR Apply Control.")
    if has_core_supir(model.model_options.get("transformer_options", {})):
        raise SUPIRMismatchError(CORE_SUPIR_CONFLICT)
    unet = model.get_model_object("diffusion_model")
    middle, joins = plan_adaptors(unet, supir.control, supir.name)
    hint = model.get_model_object("latent_format").process_in(hint_latent.float())
    sigma_max = float(model.get_model_object("model_sampling").sigma_max)
    patch = SUPIRPatch(supir, hint.cpu(), scale_start, scale_end, sigma_max, middle, joins)

    m = model.clone()
    m.set_additional_models(KEY, [supir.patcher.clone()])
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY, patch.diffusion_model_wrapper)
    m.set_model_output_block_patch(patch.output_block_patch)
    m.set_model_forward_timestep_embed_patch((CrossAttnSlot, patch.cross_attn))
    for i, join in joins.items():
        if join.cross_attn is not None:
            name = f"diffusion_model.output_blocks.{i}"
            layers = [layer for layer in m.get_model_object(name) if not isinstance(layer, CrossAttnSlot)]
            m.add_object_patch(name, TimestepEmbedSequential(OrderedDict(
                [("0", layers[0]), ("1", layers[1]), ("supir_cross_attn", CrossAttnSlot()), ("2", layers[2])])))
    return m
