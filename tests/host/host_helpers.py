"""Helpers shared by the host-tier tests: running a V3 node as ComfyUI's executor does, checking how a node pack
registers, and test photos."""
import asyncio

import torch
from comfy_api.internal import make_locked_method_func
from PIL import Image

from supir_restore.nodes import comfy_entrypoint
from supir_restore.supir.quality import metrics


def run_node(cls, **inputs):
    """Validates the class and calls its execution function on a locked class clone, as execution.py does."""
    cls.GET_SCHEMA()
    cls.VALIDATE_CLASS()
    return make_locked_method_func(cls, cls.FUNCTION, cls.PREPARE_CLASS_CLONE(None))(**inputs)


def assert_registered_with_descriptions_and_tooltips(nodes, category: str) -> None:
    """Every node of ``nodes`` is in the pack's node list, in ``category``, with a description and input tooltips."""
    registered = asyncio.run(asyncio.run(comfy_entrypoint()).get_node_list())
    assert all(node in registered for node in nodes)
    for cls in nodes:
        info = cls.GET_NODE_INFO_V1()
        assert info["description"].strip() and info["category"] == category
        for name, spec in {**info["input"]["required"], **info["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{info['name']}.{name} has no tooltip"


def smooth_photo(h: int, w: int, seed: int, channels: int = 3, cells: int = 0) -> torch.Tensor:
    """A smooth random image (1, h, w, channels) in [0, 1]: bicubic-enlarged noise of about (h/8, w/8) cells, plus
    ``cells`` more on each side."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, channels, max(1, h // 8) + cells, max(1, w // 8) + cells, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic").clamp(0, 1).movedim(1, -1)


def write_photo(path, h, w, seed):
    """A smooth random 8-bit RGB image of h x w pixels."""
    image = smooth_photo(h, w, seed)[0]
    Image.fromarray((image * 255).round().to(torch.uint8).numpy()).save(path)


def write_lpips_weights(folder) -> None:
    """LPIPS weight files in ``folder``: a freshly initialised AlexNet trunk in torchvision's layout, heads of ones."""
    model = metrics.LPIPS()
    torch.save({f"features.{i}.{p}": getattr(conv, p).detach() for i, conv in zip(model.TORCHVISION_INDEX, model.convs)
                for p in ("weight", "bias")}, folder / "alexnet-owt-7be5be79.pth")
    torch.save({f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, (_, c, *_) in enumerate(model.CONVS)},
               folder / "alex.pth")
