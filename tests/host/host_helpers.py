"""Helpers shared by the host-tier tests: running a V3 node as ComfyUI's executor does, and writing test photos."""
import torch
from comfy_api.internal import make_locked_method_func
from PIL import Image


def run_node(cls, **inputs):
    """Validates the class and calls its execution function on a locked class clone, as execution.py does."""
    cls.GET_SCHEMA()
    cls.VALIDATE_CLASS()
    return make_locked_method_func(cls, cls.FUNCTION, cls.PREPARE_CLASS_CLONE(None))(**inputs)


def write_photo(path, h, w, seed):
    """A smooth random 8-bit RGB image of h x w pixels."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(1, h // 8), max(1, w // 8), generator=g)
    image = torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic").clamp(0, 1)[0].movedim(0, -1)
    Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)
