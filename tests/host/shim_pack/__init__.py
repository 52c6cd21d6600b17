"""Test-only ComfyUI pack, loaded only by the test server: lets the stock checkpoint loader detect the tiny
SDXL layout, and provides SDXL conditioning without a text encoder (tiny checkpoints carry no CLIP)."""
import os
import sys

import comfy.supported_models

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from tiny_models import TinySDXL, fake_conditioning  # noqa: E402

if TinySDXL not in comfy.supported_models.models:
    comfy.supported_models.models.insert(0, TinySDXL)


class SUPIRTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        return (fake_conditioning(seed=seed),)


NODE_CLASS_MAPPINGS = {"SUPIRTestConditioning": SUPIRTestConditioning}
