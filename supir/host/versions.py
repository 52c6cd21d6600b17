"""What differs between the ComfyUI releases the pack runs on, in one place.

- Dynamic VRAM (ComfyUI 0.12 with ``--fast dynamic_vram``, the default on GPUs from 0.15): ``main.py`` rebinds
  ``comfy.model_patcher.CoreModelPatcher`` to ``ModelPatcherDynamic``, which cannot patch hook weights nor load
  a model fully with its weights patched; newer releases give such a patcher a non-dynamic delegate for that.
- Core SUPIR support (newer releases): its patch objects live in ``comfy.ldm.supir``.
"""
from __future__ import annotations

import comfy.model_patcher


def core_model_patcher() -> type:
    """The patcher class ComfyUI builds its own models with (looked up at call time: ``main.py`` rebinds it)."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def non_dynamic(model, feature: str):
    """``model`` itself, or, for a dynamic-VRAM patcher, the non-dynamic delegate ComfyUI itself samples hooked
    conditioning with. ``feature`` names what needs it, for the error where this ComfyUI has no delegate."""
    if not getattr(model, "is_dynamic", lambda: False)():
        return model
    delegate = getattr(model, "get_non_dynamic_delegate", None)
    if delegate is None:
        raise RuntimeError(f"{feature} patches model weights in ways ComfyUI's dynamic VRAM mode does not support "
                           f"in this ComfyUI version; start ComfyUI without '--fast dynamic_vram' (or update "
                           f"ComfyUI) to use it.")
    return delegate()


def has_core_supir(transformer_options: dict) -> bool:
    """Whether ComfyUI's own SUPIR support patched this model: its UNet patches are bound methods of its
    ``SUPIRPatch`` (``forward_timestep_embed_patch`` entries are (class, handler) tuples)."""
    for entries in transformer_options.get("patches", {}).values():
        for entry in entries:
            handler = entry[1] if isinstance(entry, tuple) else entry
            owner = getattr(handler, "__self__", None)
            if owner is not None and type(owner).__module__.startswith("comfy.ldm.supir"):
                return True
    return False
