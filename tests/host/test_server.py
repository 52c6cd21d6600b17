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
        "4": {"class_type": "SUPIRLQEncode", "inputs": {"supir": ["2", 0], "vae": ["1", 2], "image": ["3", 0],
                                                       "tile_size": 0}},
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


def pack_nodes(info: dict) -> dict:
    """The /object_info entries of this pack's nodes (ComfyUI names a custom node's module after its folder)."""
    return {name: schema for name, schema in info.items()
            if schema.get("python_module", "").split(".")[:2] == ["custom_nodes", "supir_restore"]}


def test_the_pack_creates_its_model_folders(server):
    for folder in ("iqa", "stablesr"):  # the fixture makes models/supir only
        assert os.path.isdir(os.path.join(server.models_base, "models", folder))


def test_nodes_are_registered_with_descriptions_and_tooltips(server):
    info = server.get("/object_info")
    for node in NODES:
        assert node in info, f"{node} not loaded; server log:\n{server.log()[-3000:]}"
        assert info[node]["category"] == "supir"
    pack = pack_nodes(info)
    assert set(NODES) <= set(pack) and len(pack) >= 25, sorted(pack)
    missing = []
    for node, schema in pack.items():
        assert schema["description"].strip(), f"{node} has no description"
        assert schema["category"].split("/")[0] == "supir", f"{node} is in category {schema['category']!r}"
        assert schema["display_name"].startswith(("SUPIR ", "StableSR ")), \
            f"{node} is displayed as {schema['display_name']!r}"
        for name, spec in {**schema["input"]["required"], **schema["input"].get("optional", {})}.items():
            if not (len(spec) > 1 and str(spec[1].get("tooltip") or "").strip()):
                missing.append(f"{node} input {name}")
        tooltips = schema.get("output_tooltips") or []
        for i, name in enumerate(schema["output_name"]):
            if i >= len(tooltips) or not str(tooltips[i] or "").strip():
                missing.append(f"{node} output {name}")
    assert not missing, "without a tooltip: " + ", ".join(missing)
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


def test_supir_files_in_model_patches_are_listed_and_load(server):
    options = server.get("/object_info/SUPIRLoader")["SUPIRLoader"]["input"]["required"]["supir_name"][1]["options"]
    assert "supir_pruned.safetensors" in options and "other_patch.safetensors" not in options
    status, result = server.run_prompt(restore_graph(supir_file="supir_pruned.safetensors", seed=5))
    assert status == 200, result
    assert result["status"]["status_str"] == "success", result["status"]["messages"]


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


def full_restore_graph(seed=1, steps=2, prefix="supir/full"):
    """Load, encode, condition (SUPIR Conditioning with the tiny text encoders), sample (SUPIR Restore with
    restoration guidance toward the re-encoded stage-1 image), decode and save."""
    graph = restore_graph()
    for unused in ("6", "7", "8", "11"):
        del graph[unused]
    graph.update({
        "6": {"class_type": "SUPIRConditioning", "inputs": {
            "clip": ["1", 1], "caption": "a noisy photo of a street", "positive_suffix": "sharp, detailed.",
            "negative": "blurry", "size_conditioning": "1024 (official)", "caption_per_line": False, "hint": ["4", 0]}},
        "12": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 1], "vae": ["1", 2]}},
        "8": {"class_type": "SUPIRRestore", "inputs": {
            "model": ["5", 0], "positive": ["6", 0], "negative": ["6", 1], "hint": ["4", 0], "seed": seed,
            "preset": "Custom", "start": "noise", "denoise": 1.0, "sampler": "RestoreEDM", "steps": steps,
            "s_churn": 5.0, "s_noise": 1.003, "eta": 1.0, "cfg_start": 4.0, "cfg_end": 7.5, "restore_cfg": 4.0,
            "restore_cfg_s_tmin": 0.05, "restoration_target": ["12", 0]}},
    })
    graph["10"]["inputs"]["filename_prefix"] = prefix
    return graph


def saved_pixels(server, result, node="10"):
    image = result["outputs"][node]["images"][0]
    with Image.open(os.path.join(server.base, "output", image["subfolder"], image["filename"])) as im:
        return np.asarray(im).copy()


def test_full_restore_graph_is_deterministic(server):
    runs = []
    for seed in (1, 2, 1):
        status, result = server.run_prompt(full_restore_graph(seed=seed))
        assert status == 200 and result["status"]["status_str"] == "success", result["status"]["messages"]
        runs.append(saved_pixels(server, result))
    assert runs[0].shape == (72, 56, 3) and runs[0].std() > 0
    assert np.array_equal(runs[0], runs[2]) and not np.array_equal(runs[0], runs[1])


def test_interrupt_stops_a_restore(server):
    import threading
    import time
    status, body = server.post("/prompt", {"prompt": full_restore_graph(seed=7, steps=400, prefix="supir/long")})
    assert status == 200
    pid = body["prompt_id"]

    def interrupt_when_running():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(item[1] == pid for item in server.get("/queue")["queue_running"]):
                time.sleep(1.0)
                server.post("/interrupt", {})
                return
            time.sleep(0.1)
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    hist = server.wait_for(pid, 300)
    messages = [m[0] for m in hist["status"]["messages"]]
    assert hist["status"]["status_str"] == "error" and "execution_interrupted" in messages
    assert "10" not in hist["outputs"]


def test_tiled_restore_several_tiles_wide(server):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (128, 192, 3), dtype=np.uint8)).save(os.path.join(server.base, "input", "wide.png"))
    graph = full_restore_graph(prefix="supir/tiled")
    graph["3"]["inputs"]["image"] = "wide.png"
    graph["13"] = {"class_type": "SUPIRTiledAggregation", "inputs": {
        "model": ["5", 0], "tile_size": 64, "tile_stride": 32, "grid": "snapped", "tile_batch_size": 2}}
    graph["8"]["inputs"]["model"] = ["13", 0]
    status, result = server.run_prompt(graph)
    assert status == 200 and result["status"]["status_str"] == "success", result["status"]["messages"]
    pixels = saved_pixels(server, result)
    assert pixels.shape == (128, 192, 3) and pixels.std() > 0  # latent 16x24: 3 x 5 tiles of 8x8
