"""API-format workflows without a server: a shipped one by name or any file, the overrides of the command line
(seed, prompts, scale, models, ``--set``), the LoadImage node that receives the input image, and the input images
of a file or folder."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkflowError

SHIPPED = Path(__file__).resolve().parents[1] / "api"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SEED_INPUTS = ("seed", "noise_seed")
CHECKPOINT_INPUTS = ("ckpt_name",)
SUPIR_MODEL_INPUTS = ("supir_name",)
SCALE_INPUTS = {"SUPIRResize": "scale_by", "SUPIRUpscaleRestore": "scale", "ImageScaleBy": "scale_by"}
TEXT_ENCODER_INPUTS = ("text", "text_g", "text_l")


@dataclass
class Overrides:
    """Values set on the workflow before submitting. ``sets`` holds (node id, input name, value) from --set."""
    seed: int | None = None
    positive: str | None = None
    negative: str | None = None
    scale: float | None = None
    checkpoint: str | None = None
    supir_model: str | None = None
    sets: list[tuple[str, str, Any]] = field(default_factory=list)


def resolve_workflow_path(name: str) -> Path:
    """A path, or the name of a shipped API workflow (``supir_restore_basic``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{path.stem}.json"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.json")))
    raise WorkflowError(f"workflow {name!r} not found: give a path to an API-format JSON file or a shipped name "
                        f"({known})")


def load_workflow(path: Path) -> dict:
    """Reads an API-format workflow ({node id: {"class_type", "inputs"}}); the editor's format is refused."""
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise WorkflowError(f"{path} is in the editor's (UI) format; use its API twin (workflows/api/) or "
                            f"export it from ComfyUI with 'Export (API)'")
    bad = [nid for nid, node in workflow.items() if not (isinstance(node, dict) and "class_type" in node
                                                         and isinstance(node.get("inputs"), dict))] \
        if isinstance(workflow, dict) else ["(top level)"]
    if not workflow or bad:
        raise WorkflowError(f"{path} is not an API-format workflow (node(s) without class_type/inputs: "
                            f"{', '.join(bad) or 'no nodes'})")
    return workflow


def parse_set(text: str) -> tuple[str, str, Any]:
    """``NODE_ID.input=value`` -> (node id, input, value); the value is read as JSON when it parses (8, 1.5,
    true, "8"), else kept as text. NaN and infinite numbers are refused (ComfyUI's range checks let them pass)."""
    key, sep, raw = text.partition("=")
    node_id, dot, name = key.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowError(f"--set {text!r}: expected NODE_ID.input=value, e.g. 8.steps=30")
    try:
        value = json.loads(raw, parse_constant=lambda constant: math.nan)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise WorkflowError(f"--set {text!r}: {raw} is not a finite number; give a number such as 7.5")
    return node_id, name, value


def is_link(value: Any) -> bool:
    """An input wired to another node's output: [node id, output slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def widget_targets(workflow: dict, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(node id, input) of every unlinked input with one of these names."""
    return [(nid, name) for nid, node in workflow.items() for name, value in node["inputs"].items()
            if name in names and not is_link(value)]


def text_targets(workflow: dict, socket: str) -> list[tuple[str, str]]:
    """Text inputs of CLIPTextEncode* nodes wired into an input named ``socket`` (``positive``/``negative``)."""
    sources = {value[0] for node in workflow.values() for name, value in node["inputs"].items()
               if name == socket and is_link(value)}
    return [(nid, name) for nid in sorted(sources) if workflow.get(nid, {}).get("class_type", "").startswith(
        "CLIPTextEncode") for name, value in workflow[nid]["inputs"].items()
        if name in TEXT_ENCODER_INPUTS and isinstance(value, str)]


def set_all(workflow: dict, targets: list[tuple[str, str]], value: Any, option: str, looked_for: str) -> None:
    if not targets:
        raise WorkflowError(f"{option}: no node of this workflow takes it (looked for {looked_for})")
    for nid, name in targets:
        workflow[nid]["inputs"][name] = value


def apply_overrides(workflow: dict, overrides: Overrides) -> dict:
    """A copy of ``workflow`` with the overrides set: every seed/noise_seed, the SUPIR caption or the text of the
    encoders wired to ``positive``, the SUPIR ``negative`` text or the encoders wired to ``negative``, the scale
    of the resize nodes, every ckpt_name and supir_name; --set values last, so they win. An override that matches
    nothing is an error."""
    out = copy.deepcopy(workflow)
    if overrides.seed is not None:
        set_all(out, widget_targets(out, SEED_INPUTS), overrides.seed, "--seed", "inputs seed, noise_seed")
    if overrides.positive is not None:
        set_all(out, widget_targets(out, ("caption",)) + text_targets(out, "positive"), overrides.positive,
                "--positive", "a caption input, or a CLIPTextEncode wired to a positive input")
    if overrides.negative is not None:
        targets = [(nid, name) for nid, name in widget_targets(out, ("negative",))
                   if isinstance(out[nid]["inputs"][name], str)] + text_targets(out, "negative")
        set_all(out, targets, overrides.negative, "--negative",
                "a negative text input, or a CLIPTextEncode wired to a negative input")
    if overrides.scale is not None:
        if not math.isfinite(overrides.scale):
            raise WorkflowError(f"--scale {overrides.scale:g}: give a finite number, e.g. 2")
        targets = [(nid, SCALE_INPUTS[node["class_type"]]) for nid, node in out.items()
                   if node["class_type"] in SCALE_INPUTS and not is_link(node["inputs"].get(
                       SCALE_INPUTS[node["class_type"]]))]
        set_all(out, targets, overrides.scale, "--scale",
                ", ".join(f"{kind}.{name}" for kind, name in SCALE_INPUTS.items()))
    if overrides.checkpoint is not None:
        set_all(out, widget_targets(out, CHECKPOINT_INPUTS), overrides.checkpoint, "--checkpoint",
                "input ckpt_name, e.g. Load Checkpoint")
    if overrides.supir_model is not None:
        set_all(out, widget_targets(out, SUPIR_MODEL_INPUTS), overrides.supir_model, "--supir-model",
                "input supir_name of SUPIR Load Model")
    for nid, name, value in overrides.sets:
        if nid not in out:
            raise WorkflowError(f"--set {nid}.{name}: no node {nid!r} (nodes: {', '.join(out)})")
        if is_link(out[nid]["inputs"].get(name)):
            raise WorkflowError(f"--set {nid}.{name}: that input is wired to node {out[nid]['inputs'][name][0]}; "
                                f"--set changes values, not links")
        out[nid]["inputs"][name] = value
    return out


def image_node(workflow: dict, node_id: str | None) -> str:
    """The LoadImage node that receives the input image: ``node_id``, or the only LoadImage."""
    if node_id is not None:
        if workflow.get(node_id, {}).get("class_type") != "LoadImage":
            raise WorkflowError(f"--image-node {node_id}: not a LoadImage node of this workflow")
        return node_id
    loaders = [nid for nid, node in workflow.items() if node["class_type"] == "LoadImage"]
    if not loaders:
        folders = [f"node {nid} ({node['class_type']}) folder {node['inputs']['folder']!r} (--set {nid}.folder=NAME "
                   f"changes it)" for nid, node in workflow.items() if isinstance(node["inputs"].get("folder"), str)]
        reads = f". It reads its images from ComfyUI's input directory: {'; '.join(folders)}" if folders else ""
        raise WorkflowError(f"--input: this workflow takes no input image (it has no LoadImage node); run it without "
                            f"--input{reads}")
    if len(loaders) != 1:
        raise WorkflowError("--input needs exactly one LoadImage node to receive the image; this workflow has "
                            f"{len(loaders)} ({', '.join(loaders) or 'none'}): choose one with --image-node")
    return loaders[0]


def shipped_taking_input() -> tuple[list[str], list[str]]:
    """The names of the shipped workflows that take an input image (a LoadImage node), and of those that do not."""
    takes, takes_none = [], []
    for path in sorted(SHIPPED.glob("*.json")):
        nodes = json.loads(path.read_text(encoding="utf-8")).values()
        (takes if any(node["class_type"] == "LoadImage" for node in nodes) else takes_none).append(path.stem)
    return takes, takes_none


def list_inputs(path: Path) -> list[Path]:
    """An image file, or the images of a folder (sorted by name; not recursive), each readable by Pillow."""
    if path.is_file():
        check_images([path])
        return [path]
    if not path.is_dir():
        raise WorkflowError(f"--input {path}: no such file or folder")
    try:
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        raise WorkflowError(f"--input {path}: cannot list the folder ({e.strerror or e})") from e
    if not images:
        raise WorkflowError(f"--input {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    stems = [p.stem for p in images]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise WorkflowError(f"--input {path}: several images share a name ({', '.join(clashes)}), so their outputs "
                            f"would too; rename them")
    check_images(images)
    return images


def check_images(paths: list[Path]) -> None:
    """Refuses, before anything is uploaded, files that Pillow (which ComfyUI's Load Image uses) cannot read."""
    from PIL import Image  # imported here: only --input needs it

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            bad.append(f"{path} ({type(e).__name__}: {e})")
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise WorkflowError(f"--input: not an image Pillow can read: {'; '.join(bad[:5])}{more}; give image files "
                            f"(PNG, JPEG, WebP, ...)")
