"""Tier 2: the resize and colour-fix nodes, run in-process the way ComfyUI's executor runs V3 nodes."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")


import torch  # noqa: E402

from supir_restore.nodes.image_nodes import NODES, SUPIRColorFix, SUPIRResize, SUPIRResizeTo  # noqa: E402
from supir_restore.supir.image import colour, resize  # noqa: E402
from host_helpers import assert_registered_with_descriptions_and_tooltips, run_node, smooth_photo  # noqa: E402


def photo(seed=0, h=75, w=101, c=3):
    return smooth_photo(h, w, seed, c, cells=1)


def test_nodes_are_registered_with_ids_descriptions_and_tooltips():
    assert_registered_with_descriptions_and_tooltips(NODES, "supir/image")
    assert [cls.GET_NODE_INFO_V1()["name"] for cls in NODES] == ["SUPIRColorFix", "SUPIRResize", "SUPIRResizeTo"]
    assert all(all(cls.GET_NODE_INFO_V1()["output_tooltips"]) for cls in NODES)
    assert SUPIRResize.GET_NODE_INFO_V1()["output"] == ["IMAGE", "INT", "INT"]


def test_resize_node_outputs_the_sampling_image_and_the_exact_target_size():
    image = photo(0, 75, 101)
    out = run_node(SUPIRResize, image=image, scale_by=2.5, multiple="64", method="lanczos").result
    resized, width, height = out
    assert (width, height) == (253, 188)  # 101 × 2.5 = 252.5 and 75 × 2.5 = 187.5 round up
    assert resized.shape == (1, 192, 256, 3)
    assert torch.equal(resized, resize.resize_image(image, 192, 256, "lanczos"))
    resized8, width, height = run_node(SUPIRResize, image=image, scale_by=2.0, multiple="8", method="bicubic").result
    assert (width, height) == (202, 150) and resized8.shape == (1, 152, 200, 3)
    with pytest.raises(ValueError, match="into 0 pixels"):
        run_node(SUPIRResize, image=image, scale_by=0.005, multiple="64", method="area")


@pytest.mark.parametrize("method", list(colour.COLOUR_FIXES))
def test_resize_colour_fix_and_resize_back_gives_the_exact_target_size(method):
    lq = torch.cat([photo(1, 61, 83), photo(2, 61, 83)])
    resized, width, height = run_node(SUPIRResize, image=lq, scale_by=1.5, multiple="32", method="lanczos").result
    assert resized.shape[1:3] == (96, 128)
    restored = (resized + torch.tensor([0.08, -0.05, 0.03])).clamp(0, 1)  # a colour drift, as sampling may give
    fixed = run_node(SUPIRColorFix, image=restored, reference=lq, method=method, strength=1.0).result[0]
    torch.testing.assert_close(fixed, colour.colour_fix(restored, lq, method), rtol=0, atol=0)
    assert (fixed - resized).abs().mean() < 0.5 * (restored - resized).abs().mean()
    final = run_node(SUPIRResizeTo, image=fixed, width=width, height=height, method="lanczos").result[0]
    assert final.shape == (2, 92, 125, 3) and (width, height) == (125, 92)


def test_colour_choices_keep_the_saved_ones_first_and_their_defaults():
    """Saved workflows hold a colour fix by name: the old names stay, in their order, with the old defaults, and the
    methods added since come after them."""
    from supir_restore.nodes.stablesr_nodes import StableSRUpscale
    from supir_restore.nodes.upscale_nodes import SUPIRUpscaleRestore
    added = ["lab", "mkl", "histogram", "wavelet_adaptive"]
    for node, name, saved, default in ((SUPIRColorFix, "method", ["wavelet", "adain"], "wavelet"),
                                       (SUPIRUpscaleRestore, "colour_fix", ["wavelet", "adain", "none"], "wavelet"),
                                       (StableSRUpscale, "colour_fix", ["wavelet", "adain", "none"], "adain")):
        kind, settings = node.GET_NODE_INFO_V1()["input"]["required"][name]
        assert kind == "COMBO" and settings["options"] == saved + added and settings["default"] == default, node


def test_colour_fix_node_keeps_alpha_and_blends_by_strength():
    image = photo(3, 64, 48, c=4)
    reference = photo(4, 32, 24)
    half = run_node(SUPIRColorFix, image=image, reference=reference, method="wavelet", strength=0.5).result[0]
    assert torch.equal(half[..., 3], image[..., 3])
    torch.testing.assert_close(half, colour.colour_fix(image, reference, "wavelet", 0.5), rtol=0, atol=0)
    none = run_node(SUPIRColorFix, image=image, reference=reference, method="wavelet", strength=0.0).result[0]
    assert torch.equal(none, image)
    with pytest.raises(ValueError, match="reference batch"):
        run_node(SUPIRColorFix, image=image, reference=reference.expand(2, -1, -1, -1), method="adain",
                 strength=1.0)
