"""Test-only ComfyUI pack, loaded only by the test server: lets the stock checkpoint loader detect the tiny
SDXL and SD 2.1 layouts, and provides SDXL conditioning without a text encoder (tiny checkpoints carry no CLIP)."""
import os
import sys

import comfy.supported_models

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from tiny_models import TinySD21, TinySDXL, fake_conditioning  # noqa: E402

for tiny in (TinySDXL, TinySD21):
    if tiny not in comfy.supported_models.models:
        comfy.supported_models.models.insert(0, tiny)


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
