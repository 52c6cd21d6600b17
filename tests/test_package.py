"""Tier 1: the package metadata ComfyUI's registry and manager read (pyproject.toml) against the pack itself: the
registry's required fields, the oldest supported ComfyUI without an upper bound, and every run-time import covered
by a declared dependency, the same list as requirements.txt."""
import ast
import os
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIME_CODE = ("__init__.py", "supir", "lora_train", "nodes", "workflows")
COMFYUI = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "latent_preview",
           "node_helpers", "execution", "server"}
PROVIDED_BY_COMFYUI = {"torch"}  # ComfyUI's install brings torch for the user's GPU; the pack must not pin it
DISTRIBUTION = {"PIL": "pillow"}  # import name -> distribution name, where they differ


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def run_time_imports() -> dict[str, str]:
    """Top-level module -> first file importing it, over the pack's run-time code (absolute imports only)."""
    found = {}
    for entry in RUN_TIME_CODE:
        top = os.path.join(REPO, entry)
        files = [top] if entry.endswith(".py") else [os.path.join(folder, n) for folder, _, names in os.walk(top)
                                                     for n in sorted(names) if n.endswith(".py")]
        for path in files:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for name in names:
                    found.setdefault(name.split(".")[0], os.path.relpath(path, REPO))
    return found


def test_registry_fields_are_present_and_well_formed():
    data = pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    # the registry's node id rules: < 100 characters, letters, digits and single - _ . between them
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"text": "GPL-3.0-or-later"}
    for feature in ("SUPIR", "StableSR", "caption", "LoRA", "batch", "metrics"):
        assert feature.lower() in project["description"].lower(), feature
    assert project["urls"]["Repository"].startswith("https://")
    assert comfy["PublisherId"] and comfy["DisplayName"]
    icon = comfy["Icon"]
    assert icon.endswith("docs/images/icon.svg") and os.path.isfile(os.path.join(REPO, "docs", "images", "icon.svg"))
    assert icon.startswith(project["urls"]["Repository"].replace("https://github.com/",
                                                                 "https://raw.githubusercontent.com/"))


def test_only_the_oldest_supported_comfyui_is_declared():
    # an upper bound makes the registry and the manager refuse the pack on every newer ComfyUI
    assert pyproject()["tool"]["comfy"]["requires-comfyui"] == ">=0.8.0"


def test_dependencies_are_requirements_txt_and_cover_every_run_time_import():
    declared = pyproject()["project"]["dependencies"]
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert declared == listed
    # the batch command's Ray is optional: the pyproject extra, the same as requirements-batch.txt
    optional = pyproject()["project"]["optional-dependencies"]["batch"]
    with open(os.path.join(REPO, "requirements-batch.txt"), encoding="utf-8") as f:
        assert optional == [line.strip() for line in f if line.strip() and not line.startswith("#")]
    names = {requirement_name(r) for r in declared + optional}
    # the pack's own packages (also under the folder name ComfyUI imports it by, as workflows/build.py does), and
    # the workflows folder's modules, which its scripts import by file name
    own = {"supir", "lora_train", "workflows", "supir_restore"} | {
        n[:-3] for n in os.listdir(os.path.join(REPO, "workflows")) if n.endswith(".py")}
    third_party = {m: path for m, path in run_time_imports().items()
                   if m not in sys.stdlib_module_names and m not in COMFYUI | PROVIDED_BY_COMFYUI | own}
    missing = {m: path for m, path in third_party.items() if DISTRIBUTION.get(m, m).lower() not in names}
    assert not missing, f"imported at run time but not declared: {missing}"
    assert {"transformers", "kornia", "safetensors", "aiohttp"} <= set(third_party)  # the scan sees lazy imports too
