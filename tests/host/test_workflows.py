"""Tier 2: the shipped workflows against a live server: up to date with their specs, valid against
/object_info (node types, widget values in range, typed links), listed as templates, and runnable end to end
with tiny models substituted for the real ones.

After changing a node or a spec, regenerate them with SUPIR_WRITE_WORKFLOWS=1 (this test then writes them)."""
import copy
import json
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from supir_restore.workflows.build import (FRONTEND_ONLY, build_all, input_names, input_specs, is_widget,  # noqa: E402
                                           paths, write_all)
from supir_restore.workflows.specs import SPECS  # noqa: E402

TINY = {"ckpt_name": "tiny_sdxl.safetensors", "supir_name": "tiny_supir_fp16.safetensors", "image": "example.png"}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(
        os.path.join(comfy_server.base, "input", "example.png"))
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


def check_value(spec, value, where):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if where.endswith(("ckpt_name", "supir_name", "image")):
            return  # model and image files are the user's
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
            if name not in {**info["input"].get("required", {})} and name not in spec["nodes"][str(node["id"])]["inputs"]:
                continue
            check_value(specs[name], next(values), f"{node['type']}.{name}")
            if specs[name][1].get("control_after_generate"):
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


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_api_workflow_runs_with_tiny_models(comfy_server, object_info, spec):
    prompt = copy.deepcopy(load(paths(spec["name"])[1]))
    for node in prompt.values():
        for key, value in TINY.items():
            if isinstance(node["inputs"].get(key), str):  # a file name, not a link
                node["inputs"][key] = value
    status, result = comfy_server.run_prompt(prompt, timeout=600)
    assert status == 200, result
    assert result["status"]["status_str"] == "success", result["status"]["messages"]
    saved = [o for o in result["outputs"].values() if o.get("images")]
    assert saved
