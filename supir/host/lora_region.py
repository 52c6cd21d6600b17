"""Region blend: one LoRA stack inside a mask and another outside it, on one UNet.

Each stack becomes a ComfyUI hook LoRA (a ``comfy.hooks.WeightHook``) registered on a clone of the model. ComfyUI's
sampler patches a hook group's LoRAs into the UNet weights in place when it runs conds carrying that group, backing
up only the weights the LoRAs touch and restoring them afterwards, so no second UNet is held. A keyed
CALC_COND_BATCH wrapper evaluates every model call twice — each cond with the inside stack's hook added, then
with the outside stack's — and mixes the two predictions per latent pixel: ``mask·inside + (1 − mask)·outside``.

The mix sits outside APPLY_MODEL, so the SUPIR patch and tiled aggregation run inside each pass on the whole image
and the result is the masked mix of the two full-image predictions. Every sampler that goes through ComfyUI's
CFGGuider (KSampler, SamplerCustom(Advanced), SUPIR Restore) uses it.

The mask maths is in ``region_mask`` (no ComfyUI).
"""
from __future__ import annotations

import torch

import comfy.hooks
import comfy.patcher_extension

from ..image.region_mask import RegionMaskError, check_mask, latent_mask, masked_mix
from .lora_stack import apply_lora
from .versions import non_dynamic

REGION_BLEND_KEY = "supir_lora_region"


class RegionBlend:
    """Per-MODEL region state: the mask, its feather and the two stacks' hook groups (None for an empty stack).
    Deep copies (ModelPatcher.clone deep-copies model_options) return the same object."""

    def __init__(self, mask: torch.Tensor, feather: float, inside, outside):
        self.mask, self.feather = mask.cpu(), feather
        self.inside, self.outside = inside, outside
        self._weights: tuple[tuple, torch.Tensor] | None = None

    def __deepcopy__(self, memo):
        return self

    def weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`latent_mask` for latents ``x`` [B, C, H, W], on x's device and dtype (kept for the next call)."""
        key = (x.shape[0], *x.shape[-2:], x.device, x.dtype)
        if self._weights is None or self._weights[0] != key:
            weights = latent_mask(self.mask, x.shape[-2], x.shape[-1], x.shape[0], self.feather)
            self._weights = key, weights.to(x.device, x.dtype)
        return self._weights[1]

    def calc_cond_batch_wrapper(self, executor, model, conds, x_in, timestep, model_options):
        weights = self.weights_for(x_in)
        patcher = model.current_patcher
        mode = patcher.hook_mode
        patcher.hook_mode = comfy.hooks.EnumHookMode.MinVram  # MaxSpeed would cache a patched copy per stack
        try:
            inside = executor(model, with_hooks(conds, self.inside), x_in, timestep, model_options)
            outside = executor(model, with_hooks(conds, self.outside), x_in, timestep, model_options)
        finally:
            patcher.hook_mode = mode
        return [masked_mix(weights, a, b) for a, b in zip(inside, outside)]


def with_hooks(conds: list, group) -> list:
    """``conds`` (calc_cond_batch's lists of cond dicts, or None) with ``group`` added to every cond's own hooks;
    conds sharing a hook group share the combined group, so ComfyUI still batches them together."""
    if group is None:
        return conds
    combined = {}

    def hooks_of(cond: dict):
        own = cond.get("hooks")
        if id(own) not in combined:
            combined[id(own)] = comfy.hooks.HookGroup.combine_all_hooks([own, group])
        return combined[id(own)]
    return [None if cond is None else [{**c, "hooks": hooks_of(c)} for c in cond] for cond in conds]


def register_stack(model, stack: list[tuple[str, dict[str, torch.Tensor], float]]):
    """Registers (name, tensors, strength) LoRAs on ``model`` (a ModelPatcher, changed in place) as one hook LoRA,
    with the patches SUPIR LoRA Stack would add (resolved, checked and reported by ``apply_lora`` on a throwaway
    clone). Returns (HookGroup, or None when no LoRA has a non-zero strength; report lines)."""
    hook, lines = comfy.hooks.WeightHook(), []
    for name, sd, strength in stack:
        if strength == 0:
            lines.append(f"{name}: skipped (strength 0)")
            continue
        probe, _, result = apply_lora(model, None, sd, name, strength)
        added = {}
        for key, entries in probe.patches.items():
            for _, patch, _, offset, function in entries[len(model.patches.get(key, [])):]:
                added[key if offset is None and function is None else (key, offset, function)] = patch
        model.add_hook_patches(hook, added, strength)
        lines.append(result.describe())
    if not model.hook_patches.get(hook.hook_ref):
        return None, lines
    group = comfy.hooks.HookGroup()
    group.add(hook)
    return group, lines


def apply_region_blend(model, mask: torch.Tensor, inside: list[tuple[str, dict[str, torch.Tensor], float]],
                       outside: list[tuple[str, dict[str, torch.Tensor], float]], feather: float = 0.0):
    """A clone of ``model`` sampled with the ``inside`` LoRA stack where ``mask`` ([H, W] or [B, H, W]) is 1 and the
    ``outside`` stack where it is 0 (an empty stack: the model as it is); ``feather``: Gaussian std in latent pixels.
    Stacks are (name, tensors, strength) as for SUPIR LoRA Stack; text-encoder tensors are not used.
    Returns (MODEL, report)."""
    check_mask(mask)
    if feather < 0:
        raise RegionMaskError(f"feather must be 0 or more, got {feather}")
    m = non_dynamic(model, "SUPIR LoRA Region Blend").clone()
    inside_group, inside_lines = register_stack(m, inside)
    outside_group, outside_lines = register_stack(m, outside)
    if inside_group is None and outside_group is None:
        raise RegionMaskError("the region blend has no LoRA with a non-zero strength inside or outside the mask; "
                              "select at least one LoRA (or use SUPIR LoRA Stack for one stack everywhere)")
    patch = RegionBlend(mask, feather, inside_group, outside_group)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, REGION_BLEND_KEY, patch.calc_cond_batch_wrapper)
    report = "\n".join(["inside the mask:", *(inside_lines or ["no LoRA"]),
                        "outside the mask:", *(outside_lines or ["no LoRA"])])
    return m, report
