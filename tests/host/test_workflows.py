"""Tier 2: the shipped workflows against a live server: up to date with their specs, valid against
/object_info (node types, widget values in range, typed links), listed as templates, and runnable end to end
with tiny models (and a tiny LoRA) substituted for the real ones.

After changing a node or a spec, regenerate them with SUPIR_WRITE_WORKFLOWS=1 (this test then writes them)."""
import copy
import json
import os
import re

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import numpy as np  # noqa: E402
import safetensors.torch  # noqa: E402
from PIL import Image  # noqa: E402

from supir_restore.workflows.build import (FRONTEND_ONLY, LOCALE, build_all, has_control_widget,  # noqa: E402
                                           input_names, input_specs, is_widget, paths, template_texts,
                                           write_all)
from supir_restore.workflows.specs import (BENCHMARK_FOLDER, NO_LORA, SPECS, STABLESR_512, STABLESR_TURBO,  # noqa: E402
                                           TRAINING_FOLDER)
from test_lora_host import file_for, modules_for  # noqa: E402
from tiny_models import tiny_sdxl  # noqa: E402

TINY = {"ckpt_name": "tiny_sdxl.safetensors", "supir_name": "tiny_supir_fp16.safetensors", "image": "example.png",
        "model_name": "tiny_smolvlm", "stablesr_name": "tiny_stablesr.ckpt", "cfw_name": "tiny_cfw.ckpt"}
TINY_BY_NAME = {STABLESR_512: "tiny_stablesr.ckpt", STABLESR_TURBO: "tiny_stablesr.ckpt"}  # also in Load Checkpoint
TINY_LORA = "tiny_lora.safetensors"
EXAMPLE_SIZE = (32, 24)  # width, height; small, so that the x4 upscale runs in minutes on a CPU
# name: (width, height), cropped to 96x96 and 128x96; Real-ESRGAN's x4 pipeline needs at least 74x74
BENCHMARK_PHOTOS = {"a.png": (100, 96), "b.png": (128, 100)}
# Cheaper settings for the run: 2 steps (the presets have tests of their own) and tiles small enough to split
# the tiny images; a tile size of 0 (whole image) stays 0.
TINY_STEPS = {"preset": "Custom", "steps": 2}
TINY_TILES = {"tile_size": 64, "tile_stride": 32}
TINY_TRAINING = {"steps": 2, "grad_accumulation": 1, "training_dtype": "fp32", "degradation": "blur_noise"}


def random_rgba(width: int, height: int, seed: int) -> np.ndarray:
    """An opaque random RGBA image, [height, width, 4] uint8."""
    rgba = np.random.default_rng(seed).integers(0, 255, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    return rgba


def write_example_image(path):
    """A random image whose left half is transparent: Load Image's MASK is 1 there (the painted region)."""
    rgba = random_rgba(*EXAMPLE_SIZE, seed=2)
    rgba[:, :EXAMPLE_SIZE[0] // 2, 3] = 0
    Image.fromarray(rgba).save(path)


@pytest.fixture(scope="module")
def object_info(comfy_server):
    """The server's /object_info, after writing the files the workflows read: the example image, a tiny kohya
    LoRA for the tiny SDXL, and two photos in the benchmark and the training folders."""
    write_example_image(os.path.join(comfy_server.base, "input", TINY["image"]))
    safetensors.torch.save_file(file_for(modules_for(tiny_sdxl(seed=0)), "kohya"),
                                os.path.join(comfy_server.base, "models", "loras", TINY_LORA))
    for folder in (BENCHMARK_FOLDER, TRAINING_FOLDER):
        os.makedirs(os.path.join(comfy_server.base, "input", folder), exist_ok=True)
        for seed, (name, size) in enumerate(BENCHMARK_PHOTOS.items()):
            Image.fromarray(random_rgba(*size, seed)[..., :3]).save(os.path.join(comfy_server.base, "input", folder,
                                                                                 name))
    return comfy_server.get("/object_info")


def load(path):
    with open(path) as f:
        return json.load(f)


def test_workflows_match_their_specs(object_info):
    if os.environ.get("SUPIR_WRITE_WORKFLOWS"):
        write_all(SPECS, object_info)
    for name, (ui, api) in build_all(SPECS, object_info).items():
        ui_path, api_path = paths(name)
        assert os.path.exists(ui_path), f"{ui_path} missing: run with SUPIR_WRITE_WORKFLOWS=1"
        assert load(ui_path) == json.loads(json.dumps(ui)), f"{name}: UI file out of date (SUPIR_WRITE_WORKFLOWS=1)"
        assert load(api_path) == json.loads(json.dumps(api)), f"{name}: API twin out of date"
    assert load(LOCALE) == template_texts(), f"{LOCALE} out of date (SUPIR_WRITE_WORKFLOWS=1)"


def test_every_seed_declares_its_control_widget(object_info):
    """The editor adds a 'control after generate' widget after an INT named seed unless told otherwise; every seed
    of the pack says so itself, so the widget list the editor builds is the one its schema shows."""
    ours = {kind: info for kind, info in object_info.items() if "supir_restore" in info["python_module"]}
    seeds = [(kind, name, spec) for kind, info in ours.items() for name, spec in input_specs(info).items()
             if spec[0] == "INT" and "seed" in name]
    assert len(seeds) >= 7, seeds
    for kind, name, spec in seeds:
        assert spec[1].get("control_after_generate") is not None, f"{kind}.{name} leaves control_after_generate unset"


def names_a_user_file(name: str) -> bool:
    """Inputs that name the user's model (and vision-language model), LoRA and image files (not in this server's
    lists)."""
    return name in TINY or re.fullmatch(r"lora(_[a-z]+)?_\d+", name) is not None


def check_value(spec, value, where):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if names_a_user_file(where.split(".")[-1]):
            return
        assert value in choices, f"{where}: {value!r} not in {choices}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r}"
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), f"{where}: {value}"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_ui_workflow_is_valid(object_info, spec):
    ui = load(paths(spec["name"])[0])
    by_id = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"{node['type']} is not a node of this server"
        info = object_info[node["type"]]
        specs = input_specs(info)
        values = iter(node["widgets_values"])
        for name in input_names(info):
            if not is_widget(specs[name]):
                continue
            check_value(specs[name], next(values), f"{node['type']}.{name}")
            if has_control_widget(name, specs[name]):
                assert next(values) in ("fixed", "increment", "decrement", "randomize")
        assert next(values, None) is None, f"{node['type']}: extra widget values"
        for i, socket in enumerate(node["inputs"]):
            required = socket["name"] in info["input"].get("required", {})
            assert socket["link"] is not None or not required, f"{node['type']}.{socket['name']} unconnected"
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        assert object_info[by_id[src]["type"]]["output"][slot] == kind
        assert by_id[dst]["inputs"][dst_slot]["type"] == kind and by_id[dst]["inputs"][dst_slot]["link"] == link_id


def test_workflows_are_listed_as_templates(comfy_server, object_info):
    listed = comfy_server.get("/workflow_templates")["supir_restore"]
    assert sorted(listed) == sorted(s["name"] for s in SPECS)


def tiny_run(prompt: dict, seed: int) -> dict:
    """The prompt with the tiny test files in place of the user's (LoRA slots set to None stay empty), 2 restore
    steps, 4-token captions, small tiles and a restore seed of its own (so that ComfyUI's cache does not skip a workflow that,
    substituted, equals one run before, as Fidelity equals Quality)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if names_a_user_file(key) and isinstance(value, str) and value != NO_LORA:  # a file name, not a link
                inputs[key] = TINY_BY_NAME.get(value) or TINY.get(key, TINY_LORA)
        if node["class_type"] in ("SUPIRRestore", "StableSRRestore"):
            inputs.update(TINY_STEPS, seed=seed)
        if node["class_type"] == "SUPIRCaptionVLM":
            inputs["max_tokens"] = 4
        if node["class_type"] == "SUPIRTrainingDataset":
            inputs["resolution"] = 64
        if node["class_type"] == "SUPIRTrainLoRA":
            inputs.update(TINY_TRAINING)
        inputs.update({key: size for key, size in TINY_TILES.items() if inputs.get(key)})
    return prompt


def expected_size(prompt: dict) -> tuple[int, int]:
    """(width, height) of a saved restoration: the example image's, times SUPIR Resize For Restore's scale."""
    scale = next((n["inputs"]["scale_by"] for n in prompt.values() if n["class_type"] == "SUPIRResize"), 1.0)
    return round(EXAMPLE_SIZE[0] * scale), round(EXAMPLE_SIZE[1] * scale)


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_api_workflow_runs_with_tiny_models(comfy_server, object_info, spec):
    prompt = tiny_run(load(paths(spec["name"])[1]), seed=SPECS.index(spec))
    status, result = comfy_server.run_prompt(prompt, timeout=600)
    assert status == 200, result
    check_saved_outputs(comfy_server, spec["name"], prompt, result)


def check_saved_outputs(comfy_server, name: str, prompt: dict, result: dict) -> None:
    """The run of ``prompt`` (its history entry ``result``) succeeded and every saving node of the prompt saved:
    images of the expected size, the training's loss curve, the benchmark's report."""
    errors = [m[1] for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert result["status"]["status_str"] == "success", [(e["node_type"], e["exception_message"]) for e in errors]
    checked = 0
    for nid, output in result["outputs"].items():
        if prompt[nid]["class_type"] == "SaveImage":
            for image in output["images"]:
                with Image.open(os.path.join(comfy_server.base, "output", image["subfolder"], image["filename"])) as im:
                    assert im.size == expected_size(prompt)
                checked += 1
        if prompt[nid]["class_type"] == "SUPIRTrainLoRA":
            assert len(output["images"]) == 1  # the loss curve
            checked += 1
        if prompt[nid]["class_type"] == "SUPIRBenchmarkReport":
            assert f"images: {len(BENCHMARK_PHOTOS)}, crop border: 4" in output["text"][0]
            checked += 1
    savers = {nid for nid, node in prompt.items()
              if node["class_type"] in ("SaveImage", "SUPIRTrainLoRA", "SUPIRBenchmarkReport")}
    assert savers <= set(result["outputs"]), f"{name}: nodes {savers - set(result['outputs'])} saved nothing"
    assert checked, f"{name} saved nothing"
