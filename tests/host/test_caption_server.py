"""Tier 2: captions through a real ComfyUI server: SUPIR Caption (VLM) feeding SUPIR Conditioning, whole-image and
per tile of the tiled aggregation, checked against the captions the same tiny model gives in this process."""
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from supir_restore.supir.caption.model import caption_image, load_vlm  # noqa: E402
from supir_restore.supir.caption.tiles import tile_crops  # noqa: E402
from supir_restore.supir.image.io import read_image  # noqa: E402
from test_server import full_restore_graph, saved_pixels  # noqa: E402
from tiny_models import full_vae  # noqa: E402

INSTRUCTION = "describe the photo ."
TILE = STRIDE = 64  # px: the test VAE's latent of the 64 x 96 image (4 px per latent pixel) is 2 x 3 tiles


@pytest.fixture(scope="module")
def server(comfy_server):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(
        os.path.join(comfy_server.base, "input", "caption_lq.png"))
    return comfy_server


def caption_node(tile_size=0):
    """SUPIR Caption (VLM) of the LQ image with SUPIR Load VLM's model (node "20") and the hint (node "4")."""
    return {"class_type": "SUPIRCaptionVLM", "inputs": {
        "vlm": ["20", 0], "image": ["3", 0], "instruction": INSTRUCTION, "max_tokens": 5, "decoding": "greedy",
        "seed": 0, "prefix": "", "suffix": "", "tile_size": tile_size, "tile_stride": STRIDE, "grid": "snapped",
        "hint": ["4", 0]}}


def captioned_graph(caption, tile_caption=None, model="tiny_llava", seed=3):
    """The full restore of caption_lq.png with ``caption`` (text or a link) in SUPIR Conditioning, and with
    ``tile_caption`` (text or a link) as per-tile captions of a tiled aggregation of 64 px tiles."""
    graph = full_restore_graph(seed=seed, prefix="supir/captioned")
    graph["3"]["inputs"]["image"] = "caption_lq.png"
    graph["20"] = {"class_type": "SUPIRLoadVLM", "inputs": {"model_name": model, "weight_dtype": "auto"}}
    graph["6"]["inputs"]["caption"] = caption
    if tile_caption is not None:
        graph["22"] = {"class_type": "SUPIRConditioning", "inputs": {
            **graph["6"]["inputs"], "caption": tile_caption, "caption_per_line": True}}
        del graph["22"]["inputs"]["hint"]
        graph["13"] = {"class_type": "SUPIRTiledAggregation", "inputs": {
            "model": ["5", 0], "tile_size": TILE, "tile_stride": STRIDE, "grid": "snapped", "tile_batch_size": 1,
            "tile_positive": ["22", 0]}}
        graph["8"]["inputs"]["model"] = ["13", 0]
    return graph


def restored(server, graph):
    status, result = server.run_prompt(graph)
    assert status == 200, result
    errors = [(m[1]["node_type"], m[1]["exception_message"]) for m in result["status"]["messages"]
              if m[0] == "execution_error"]
    assert result["status"]["status_str"] == "success", errors
    return saved_pixels(server, result)


@pytest.fixture(scope="module")
def lq(server):
    return read_image(os.path.join(server.base, "input", "caption_lq.png"))


def test_the_caption_reaches_supir_conditioning(server, lq):
    listed = server.get("/object_info/SUPIRLoadVLM")["SUPIRLoadVLM"]["input"]["required"]["model_name"][1]["options"]
    assert listed == ["tiny_llava", "tiny_smolvlm"]  # from models/vlm and models/LLM
    vlm = load_vlm(os.path.join(server.models_base, "models", "vlm", "tiny_llava"))
    expected = caption_image(vlm, lq, INSTRUCTION, 5)
    assert expected
    graph = captioned_graph(["21", 0])
    graph["21"] = caption_node()
    assert np.array_equal(restored(server, graph), restored(server, captioned_graph(expected)))


def test_per_tile_captions_reach_their_tiles(server, lq):
    vlm = load_vlm(os.path.join(server.models_base, "models", "LLM", "tiny_smolvlm"))
    latent = tuple(s // full_vae().downscale_ratio for s in lq.shape[:2])
    lines = [caption_image(vlm, crop[0], INSTRUCTION, 5) or "."
             for crop in tile_crops(lq[None], TILE // 8, STRIDE // 8, latent_size=latent)]
    assert len(lines) == 6 and len(set(lines)) > 1
    graph = captioned_graph("a photo", ["21", 0], model="tiny_smolvlm")
    graph["21"] = caption_node(tile_size=TILE)
    from_node = restored(server, graph)
    assert np.array_equal(from_node, restored(server, captioned_graph("a photo", "\n".join(lines))))
    assert not np.array_equal(from_node, restored(server, captioned_graph("a photo", "\n".join(lines[::-1]))))

