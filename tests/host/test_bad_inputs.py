"""Tier 2: inputs every node of the pack checks alike, run in-process on every registered node, so a node added later
is covered too."""
import asyncio

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from supir_restore.nodes import comfy_entrypoint  # noqa: E402
from host_helpers import run_node  # noqa: E402

NODES = asyncio.run(asyncio.run(comfy_entrypoint()).get_node_list())


def inputs_of(cls) -> dict[str, tuple]:
    """Every input of the node: name -> (type, options)."""
    info = cls.GET_NODE_INFO_V1()["input"]
    return {name: (spec[0], spec[1] if len(spec) > 1 else {})
            for group in ("required", "optional") for name, spec in info.get(group, {}).items()}


def stand_in(kind, options):
    """A widget's default (the first choice of a list), a small valid image or latent, or None for a model or other
    object: a node that reaches its work with a None model fails with another error than the one asserted."""
    if kind == "IMAGE":
        return torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    if kind == "LATENT":
        return {"samples": torch.zeros(1, 4, 8, 8)}
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        return (options.get("options") or [None])[0]
    return None


def stand_in_inputs(cls, **given) -> dict:
    """Stand-ins for every input but the optional ones without one (an unconnected ``names``), then ``given``."""
    optional = cls.GET_NODE_INFO_V1()["input"].get("optional", {})
    inputs = {n: value for n, (kind, options) in inputs_of(cls).items()
              if (value := stand_in(kind, options)) is not None or n not in optional} | given
    return {n: [v] for n, v in inputs.items()} if cls.INPUT_IS_LIST else inputs


IMAGE_INPUTS = [(cls, name) for cls in NODES for name, (kind, _) in inputs_of(cls).items() if kind == "IMAGE"]


@pytest.mark.parametrize("cls, name", IMAGE_INPUTS, ids=[f"{c.__name__}.{n}" for c, n in IMAGE_INPUTS])
def test_every_image_input_refuses_nan_and_infinity_naming_the_input(comfy_dirs, cls, name):
    """NaN or infinite pixels (a VAE decode overflowing in fp16) are refused before any work, naming the input;
    they used to pass through the resize nodes silently and be captioned "a"."""
    inputs = stand_in_inputs(cls, **{name: torch.full((1, 64, 64, 3), float("nan"))})
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        run_node(cls, **inputs)
    shown = {"hq_images": "HQ image", "lq_images": "LQ image", "restored_images": "restored image"}.get(name, name)
    assert shown in str(error.value)


# an empty batch in a list input is a count mismatch, told as such
EMPTY_IMAGES = [(cls, name, shape) for cls, name in IMAGE_INPUTS
                for shape in ((1, 0, 64, 3), (1, 64, 0, 3), (0, 64, 64, 3)) if not (cls.INPUT_IS_LIST and shape[0] == 0)]


@pytest.mark.parametrize("cls, name, shape", EMPTY_IMAGES, ids=[f"{c.__name__}.{n}-{s}" for c, n, s in EMPTY_IMAGES])
def test_every_image_input_refuses_an_empty_image_naming_the_input(comfy_dirs, cls, name, shape):
    """A side of 0 px or a batch of none used to reach a division by zero, or torch's size errors."""
    with pytest.raises(ValueError, match="is empty") as error:
        run_node(cls, **stand_in_inputs(cls, **{name: torch.rand(*shape)}))
    shown = {"hq_images": "HQ image", "lq_images": "LQ image", "restored_images": "restored image"}.get(name, name)
    assert shown in str(error.value)


SIZES = ("tile_size", "tile_stride", "vae_tile_size", "width", "height", "resolution")
SIZE_INPUTS = [(cls, name) for cls in NODES for name, (kind, _) in inputs_of(cls).items()
               if kind == "INT" and name in SIZES]


@pytest.mark.parametrize("cls, name", SIZE_INPUTS, ids=[f"{c.__name__}.{n}" for c, n in SIZE_INPUTS])
def test_every_tile_and_size_input_refuses_a_size_below_its_least_naming_the_input(comfy_dirs, cls, name):
    """Widget values are held to the schema's min by the server, but not its step, nor a linked INT, nor an
    in-process call: 1 px tiles used to raise a ZeroDivisionError, 2 px a kernel-size error, and 8 to 32 px ran for
    minutes. Every such input is checked in pixels before any work (the models here are None)."""
    given = {name: 0 if name in ("width", "height") else 1}
    if "tiles" in inputs_of(cls):
        given["tiles"] = "manual"  # automatic tiles leave the tile inputs unused
    if name == "tile_stride" and not stand_in(*inputs_of(cls)["tile_size"]):
        given["tile_size"] = 512  # the stride is used with a tile size only
    with pytest.raises(ValueError) as error:
        run_node(cls, **stand_in_inputs(cls, **given))
    assert name in str(error.value), str(error.value)


SIZE_ONLY_LATENTS = {("SUPIRConditioning", "hint"), ("SUPIRCaptionVLM", "hint")}  # read for their size only
LATENT_INPUTS = [(cls, name) for cls in NODES for name, (kind, _) in inputs_of(cls).items()
                 if kind == "LATENT" and (cls.GET_NODE_INFO_V1()["name"], name) not in SIZE_ONLY_LATENTS]


@pytest.mark.parametrize("cls, name", LATENT_INPUTS, ids=[f"{c.__name__}.{n}" for c, n in LATENT_INPUTS])
def test_every_latent_input_sampled_or_decoded_refuses_nan_naming_the_input(comfy_dirs, cls, name):
    samples = torch.zeros(1, 4, 8, 8)
    samples[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=f"^{name} contains 1 NaN or infinite value"):
        run_node(cls, **stand_in_inputs(cls, **{name: {"samples": samples}}))
