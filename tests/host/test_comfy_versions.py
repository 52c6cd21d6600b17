"""Tier 2: the pack on ComfyUI's dynamic-VRAM patchers. ``ModelPatcherDynamic`` only exists on a GPU (on the CPU
ComfyUI builds a plain ModelPatcher instead), so these tests give a ModelPatcher the dynamic patcher's two
methods the pack reads, ``is_dynamic`` and ``get_non_dynamic_delegate``, and check what the pack does with them."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_patcher  # noqa: E402

from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from supir_restore.supir.host.lora_region import apply_region_blend  # noqa: E402
from test_lora_region import lora  # noqa: E402


class DynamicPatcher(comfy.model_patcher.ModelPatcher):
    """What the pack sees of ComfyUI's dynamic patcher: dynamic, with a non-dynamic delegate."""

    def is_dynamic(self):
        return True

    def get_non_dynamic_delegate(self):
        delegate = comfy.model_patcher.ModelPatcher(self.model, self.load_device, self.offload_device)
        self.delegates.append(delegate)
        return delegate


class DynamicPatcherWithoutDelegate(comfy.model_patcher.ModelPatcher):
    """ComfyUI 0.12 with ``--fast dynamic_vram``: dynamic, and no delegate yet."""

    def is_dynamic(self):
        return True


def as_dynamic(model, cls):
    dynamic = cls(model.model, model.load_device, model.offload_device)
    dynamic.delegates = []
    return dynamic


def test_region_blend_takes_the_non_dynamic_delegate(tiny_model):
    dynamic = as_dynamic(tiny_model, DynamicPatcher)
    mask = torch.ones(16, 16)
    blended, _ = apply_region_blend(dynamic, mask, [("a", lora(tiny_model, 1), 1.0)], [])
    assert len(dynamic.delegates) == 1 and not isinstance(blended, DynamicPatcher)
    assert blended.model is tiny_model.model and blended.hook_patches  # the hooks sit on the delegate's clone

    without = as_dynamic(tiny_model, DynamicPatcherWithoutDelegate)
    with pytest.raises(RuntimeError, match="SUPIR LoRA Region Blend .*without '--fast dynamic_vram'"):
        apply_region_blend(without, mask, [("a", lora(tiny_model, 1), 1.0)], [])


def test_supir_loads_under_comfyuis_core_model_patcher(tiny_supir_file, monkeypatch):
    class CorePatcher(comfy.model_patcher.ModelPatcher):
        pass
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", CorePatcher, raising=False)
    supir = load_supir(tiny_supir_file, "fp32")
    assert type(supir.patcher) is CorePatcher
