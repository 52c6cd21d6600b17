"""Tier 2: LoRA training through a real ComfyUI server (inference mode lifted only where it trains): the graph
runs, writes the LoRA, its checkpoint and the loss curve; an interrupt saves a checkpoint that a re-queued graph
resumes from; the LoRA loads in the stock LoraLoader."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
from PIL import Image  # noqa: E402


def training_graph(lora_name: str, steps: int, folder: str = "train") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "2": {"class_type": "SUPIRLoader", "inputs": {"supir_name": "tiny_supir_fp16.safetensors",
                                                      "weight_dtype": "auto"}},
        "3": {"class_type": "SUPIRTrainingDataset", "inputs": {"folder": folder, "resolution": 64,
                                                               "aspect_buckets": False, "default_caption": "a photo"}},
        "4": {"class_type": "SUPIRTrainLoRA", "inputs": {
            "model": ["1", 0], "supir_model": ["2", 0], "vae": ["1", 2], "clip": ["1", 1], "dataset": ["3", 0],
            "lora_name": lora_name, "steps": steps, "rank": 2, "alpha": 2.0, "targets": "attention",
            "learning_rate": 1e-3, "batch_size": 1, "grad_accumulation": 1, "training_dtype": "fp32",
            "gradient_checkpointing": True, "cache_latents": False, "degradation": "blur_noise", "snr_gamma": 0.0,
            "seed": 0, "save_every": 1, "resume": True, "validate_every": 0, "validation_steps": 2}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 2], "filename_prefix": f"train/{lora_name}"}},
    }


@pytest.fixture(scope="module")
def server(comfy_server):
    folder = os.path.join(comfy_server.base, "input", "train")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
    with open(os.path.join(folder, "0.txt"), "w") as f:
        f.write("a noisy test pattern")
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"not a png")
    return comfy_server


def checkpoint_step(server, lora_name: str) -> int:
    path = os.path.join(server.base, "output", "supir_lora_training", lora_name, "checkpoint.safetensors")
    with safetensors.safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["supir_training"])["step"]


def test_training_graph_writes_lora_checkpoint_and_curve(server):
    status, hist = server.run_prompt(training_graph("server_lora", steps=2))
    assert status == 200 and hist["status"]["status_str"] == "success", hist
    lora = os.path.join(server.base, "models", "loras", "server_lora.safetensors")
    with safetensors.safe_open(lora, framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert checkpoint_step(server, "server_lora") == 2
    saved = hist["outputs"]["5"]["images"]
    assert len(saved) == 1 and os.path.isfile(os.path.join(server.base, "output", saved[0]["subfolder"],
                                                           saved[0]["filename"]))

    # The stock LoraLoader lists and applies the file inside a graph.
    assert "server_lora.safetensors" in server.get("/object_info/LoraLoader")["LoraLoader"]["input"]["required"][
        "lora_name"][0]
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                     "lora_name": "server_lora.safetensors",
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo"}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "positive": ["4", 0], "negative": ["4", 0], "latent_image": ["3", 0], "seed": 0,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    log_start = len(server.log())
    status, hist = server.run_prompt(graph)
    assert status == 200 and hist["status"]["status_str"] == "success", hist
    assert "lora key not loaded" not in server.log()[log_start:]


def test_interrupted_training_saves_and_resumes(server):
    status, body = server.post("/prompt", {"prompt": training_graph("interrupted_lora", steps=400)})
    assert status == 200
    pid = body["prompt_id"]
    ckpt = os.path.join(server.base, "output", "supir_lora_training", "interrupted_lora", "checkpoint.safetensors")

    def interrupt_after_first_checkpoint():
        deadline = time.time() + 600
        while time.time() < deadline and not os.path.isfile(ckpt):
            time.sleep(0.2)
        server.post("/interrupt", {})
    threading.Thread(target=interrupt_after_first_checkpoint, daemon=True).start()
    hist = server.wait_for(pid)
    assert "execution_interrupted" in [m[0] for m in hist["status"]["messages"]]
    stopped_at = checkpoint_step(server, "interrupted_lora")
    assert 1 <= stopped_at < 400

    status, hist = server.run_prompt(training_graph("interrupted_lora", steps=stopped_at + 1))
    assert status == 200 and hist["status"]["status_str"] == "success", hist
    assert checkpoint_step(server, "interrupted_lora") == stopped_at + 1
