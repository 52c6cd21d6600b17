"""Tier 2: the nodes through a real ComfyUI server (main.py --cpu on 127.0.0.1) with tiny models."""
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

NODES = ("SUPIRLoader", "SUPIRLQEncode", "ApplySUPIR")


def restore_graph(supir_file="tiny_supir_fp16.safetensors", image="lq.png", scale_end=0.9, seed=4):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "2": {"class_type": "SUPIRLoader", "inputs": {"supir_name": supir_file, "weight_dtype": "auto"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "SUPIRLQEncode", "inputs": {"supir": ["2", 0], "vae": ["1", 2], "image": ["3", 0]}},
        "5": {"class_type": "ApplySUPIR", "inputs": {"model": ["1", 0], "supir": ["2", 0], "hint": ["4", 0],
                                                     "control_scale_start": 1.0, "control_scale_end": scale_end}},
        "6": {"class_type": "SUPIRTestConditioning", "inputs": {"seed": 1}},
        "7": {"class_type": "SUPIRTestConditioning", "inputs": {"seed": 2}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 2, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "supir/restored"}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "supir/stage1"}},
    }


@pytest.fixture(scope="module")
def server(comfy_server):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (72, 56, 3), dtype=np.uint8)).save(os.path.join(comfy_server.base, "input", "lq.png"))
    return comfy_server


def test_nodes_are_registered_with_descriptions_and_tooltips(server):
    info = server.get("/object_info")
    for node in NODES:
        assert node in info, f"{node} not loaded; server log:\n{server.log()[-3000:]}"
        schema = info[node]
        assert schema["description"].strip() and schema["category"] == "supir"
        for name, spec in {**schema["input"]["required"], **schema["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
    combo = info["SUPIRLoader"]["input"]["required"]["supir_name"]
    assert combo[0] == "COMBO" and "tiny_supir_fp16.safetensors" in combo[1]["options"]
    assert info["SUPIRLQEncode"]["output"] == ["LATENT", "IMAGE", "VAE"]


def test_restore_graph_runs_end_to_end(server):
    status, result = server.run_prompt(restore_graph())
    assert status == 200, result
    assert result["status"]["status_str"] == "success", result["status"]["messages"]
    restored = result["outputs"]["10"]["images"][0]
    path = os.path.join(server.base, "output", restored["subfolder"], restored["filename"])
    with Image.open(path) as im:
        assert im.size == (56, 72)  # 56x72 is already a multiple of 8
        pixels = np.asarray(im)
    assert pixels.std() > 0
    assert "11" in result["outputs"]


def test_corrupt_supir_file_fails_with_a_clear_message(server):
    status, result = server.run_prompt(restore_graph(supir_file="corrupt.safetensors"))
    assert status == 200
    assert result["status"]["status_str"] == "error"
    errors = [m[1] for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SUPIRLoader"
    assert "corrupt or truncated" in errors[0]["exception_message"]


def test_missing_input_is_a_validation_error(server):
    graph = restore_graph()
    del graph["5"]["inputs"]["hint"]
    del graph["11"]  # with no valid output left the whole prompt is refused
    status, body = server.post("/prompt", {"prompt": graph})
    assert status == 400
    assert body["node_errors"]["5"]["errors"][0]["type"] == "required_input_missing"
