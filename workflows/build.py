"""Builds the shipped workflows from the graphs in ``specs.py``: the UI format (``workflows/<name>.json``, what
ComfyUI's template browser lists) and its API twin (``workflows/api/<name>.json``, what ``POST /prompt`` takes).
Widget order, socket types and output slots come from a live server's ``/object_info``.

Regenerate after changing a node or a spec (a ComfyUI server with this pack loaded must be running):
    python workflows/build.py http://127.0.0.1:8188
and the pictures (template browser cards, docs/workflows.md, README) from the screenshots that
tests/host/test_editor.py saves:
    python workflows/build.py --pictures /tmp/supir_editor_screenshots
"""
from __future__ import annotations

import json
import os
import sys
import types
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
# The stages a graph is laid out in, each framed by a group with its name; left to right in columns, the last
# two stacked in one
LOAD, STAGE1, PROMPTS, RESTORE, DECODE, SAVE, TRAIN = (
    "Load", "Stage 1", "Prompts", "Restore", "Decode and colour", "Save", "Train")
COLUMNS = ((LOAD,), (STAGE1,), (PROMPTS,), (RESTORE, TRAIN), (DECODE, SAVE))
STAGE_COLOURS = {LOAD: "#3f789e", STAGE1: "#8A8", PROMPTS: "#b58b2a", RESTORE: "#a1309b", DECODE: "#88A",
                 SAVE: "#4f8f4f", TRAIN: "#a1309b"}
TITLE_HEIGHT = 30  # the editor's node title bar, above a node's position
GROUP_TITLE = 50  # a group's title bar and the space below it
NODE_GAP, COLUMN_GAP, GROUP_PAD = 40, 70, 15
# The editor's canvas in a 1600 x 1000 window: where the side bar and the top bar (tabs, Run) leave it free and
# its size from there; the smallest scale at which the editor still draws text
WINDOW, VIEW_ORIGIN, VIEW = (1600, 1000), (70, 100), (1520, 890)
MIN_SCALE, MAX_SCALE = 0.6, 1.0
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def is_widget(spec: list) -> bool:
    """A value set on the node (a COMBO, number, text or switch), not a socket-only input such as a MODEL or a
    forceInput STRING; a widget may still be linked, and then shows as a socket too."""
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def has_control_widget(name: str, spec: list) -> bool:
    """Whether the editor adds a 'control after generate' widget (fixed / increment / decrement / randomize) after
    this widget, whose value follows it in ``widgets_values``: the frontend's rule is the input's
    control_after_generate option, and, for an INT that does not give it, a name of ``seed`` or ``noise_seed``."""
    options = spec[1] if len(spec) > 1 else {}
    if options.get("control_after_generate") is not None:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def input_specs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def input_names(info: dict) -> list[str]:
    order = info.get("input_order", {})
    return [*order.get("required", []), *order.get("optional", [])]


def with_widget_defaults(spec: dict, object_info: dict) -> dict:
    """The spec with every widget the spec leaves out (an optional one) set to its schema default: the editor
    shows and sends every widget, so both files say what the editor runs."""
    nodes = {}
    for nid, node in spec["nodes"].items():
        if node["class_type"] not in FRONTEND_ONLY:
            specs = input_specs(object_info[node["class_type"]])
            defaults = {name: specs[name][1]["default"] for name in input_names(object_info[node["class_type"]])
                        if is_widget(specs[name]) and name not in node["inputs"] and "default" in specs[name][1]}
            node = {**node, "inputs": {**node["inputs"], **defaults}}
        nodes[nid] = node
    return {**spec, "nodes": nodes}


def api_format(spec: dict) -> dict:
    """The API twin: every node but the notes, with its title."""
    return {nid: {"class_type": node["class_type"], "inputs": node["inputs"], "_meta": {"title": node["title"]}}
            for nid, node in spec["nodes"].items() if node["class_type"] not in FRONTEND_ONLY}


def workflow_id(name: str) -> str:
    """The editor wants a UUID; one derived from the name stays the same when the file is regenerated."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"supir_restore/workflows/{name}"))


def column_order(spec: dict, stage: str) -> list[str]:
    """The nodes of ``stage`` top to bottom: in listed order, except that a node goes below the nodes of its column
    that feed it."""
    left = [nid for nid, node in spec["nodes"].items() if node["stage"] == stage]
    order = []
    while left:
        nid = next(n for n in left if all(v[0] not in left for v in spec["nodes"][n]["inputs"].values()
                                          if isinstance(v, list)))
        order.append(nid)
        left.remove(nid)
    return order


def layout(spec: dict) -> tuple[dict[str, list[float]], list[dict]]:
    """Node positions (node id -> [x, y] of the body's top-left corner) and the stage groups: the stages of a
    column framed one below the other, their nodes stacked with room for their title bars."""
    positions, groups, x = {}, [], 0
    for stages in COLUMNS:
        stages = [s for s in stages if any(node["stage"] == s for node in spec["nodes"].values())]
        if not stages:
            continue
        width = max(node["size"][0] for node in spec["nodes"].values() if node["stage"] in stages)
        top = 0
        for stage in stages:
            y = top + GROUP_TITLE + TITLE_HEIGHT
            for nid in column_order(spec, stage):
                positions[nid] = [x, y]
                y += spec["nodes"][nid]["size"][1] + NODE_GAP + TITLE_HEIGHT
            bottom = y - NODE_GAP - TITLE_HEIGHT + GROUP_PAD
            groups.append({"id": len(groups) + 1, "title": stage, "color": STAGE_COLOURS[stage], "font_size": 24,
                           "flags": {}, "bounding": [x - GROUP_PAD, top, width + 2 * GROUP_PAD, bottom - top]})
            top = bottom + NODE_GAP
        x += width + COLUMN_GAP
    return positions, groups


def first_view(groups: list[dict]) -> dict:
    """The editor's opening view: the whole graph when it fits at a readable scale, else its left and top part
    at the smallest readable scale."""
    left, top = min(g["bounding"][0] for g in groups), min(g["bounding"][1] for g in groups)
    right = max(g["bounding"][0] + g["bounding"][2] for g in groups)
    bottom = max(g["bounding"][1] + g["bounding"][3] for g in groups)
    fit = min(VIEW[0] / (right - left), VIEW[1] / (bottom - top))
    scale = round(min(MAX_SCALE, max(MIN_SCALE, fit)), 3)
    return {"scale": scale, "offset": [round(VIEW_ORIGIN[0] / scale - left, 1), round(VIEW_ORIGIN[1] / scale - top, 1)]}


def ui_format(spec: dict, object_info: dict) -> dict:
    """The editor's format: nodes with positions, socket inputs with link ids, widget values in schema order
    (plus the 'control after generate' value after seeds), and typed links. A linked widget (e.g. a width from
    another node) is a socket marked with its widget, and keeps its default among the widget values."""
    nodes, links = [], []
    outputs = {}  # (node id, slot) -> link ids
    ids = {nid: int(nid) for nid in spec["nodes"]}
    for nid, node in spec["nodes"].items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                src, slot = value
                kind = object_info[spec["nodes"][src]["class_type"]]["output"][slot]
                link_id = len(links) + 1
                links.append([link_id, ids[src], slot, ids[nid], name, kind])
                outputs.setdefault((src, slot), []).append(link_id)
    positions, groups = layout(spec)
    for order, (nid, node) in enumerate(spec["nodes"].items()):
        kind = node["class_type"]
        entry = {"id": ids[nid], "type": kind, "pos": positions[nid], "size": list(node["size"]),
                 "flags": {}, "order": order, "mode": 0, "properties": {"Node name for S&R": kind}}
        if node.get("title"):
            entry["title"] = node["title"]
        if kind in FRONTEND_ONLY:
            entry.update(inputs=[], outputs=[], widgets_values=[node["inputs"]["text"]])
            if "color" in node:
                entry.update(color=node["color"], bgcolor=node["bgcolor"])
            nodes.append(entry)
            continue
        info = object_info[kind]
        specs = input_specs(info)
        sockets, widgets = [], []
        for name in input_names(info):
            value = node["inputs"].get(name)
            linked = isinstance(value, list)
            widget = is_widget(specs[name])
            if widget and name in node["inputs"]:
                widgets.append(specs[name][1].get("default") if linked else value)
                if has_control_widget(name, specs[name]):
                    widgets.append("fixed")
            if widget and not linked:
                continue
            link = next(l[0] for l in links if l[3] == ids[nid] and l[4] == name) if linked else None
            sockets.append({"name": name, "type": specs[name][0], "link": link,
                            **({"widget": {"name": name}} if widget else {})})
        entry["inputs"] = sockets
        entry["outputs"] = [{"name": out_name, "type": out_type, "links": outputs.get((nid, slot), []),
                             "slot_index": slot}
                            for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))]
        entry["widgets_values"] = widgets
        nodes.append(entry)
    for link in links:  # the target slot is the input's index among the node's sockets
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = next(i for i, s in enumerate(target["inputs"]) if s["name"] == link[4])
    return {"id": workflow_id(spec["name"]), "revision": 0, "last_node_id": max(ids.values()),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": first_view(groups), "info": {"description": spec["description"]}},
            "version": 0.4}


# The folder names the pack is installed under (README's git clone, the registry's id): the template browser
# names the pack's template category by its folder, or by the text given for it here. (ComfyUI 0.12.1's browser
# shows a custom template's file name as its title and description and takes no other text for them.)
PACK_FOLDERS = ("supir_restore", "supir-restore")
LOCALE = os.path.join(os.path.dirname(HERE), "locales", "en", "main.json")


def template_texts() -> dict:
    """The pack's English text for the template browser: its category's name."""
    return {"templateWorkflows": {"category": {folder: "SUPIR Restore" for folder in PACK_FOLDERS}}}


def paths(name: str) -> tuple[str, str]:
    return os.path.join(HERE, f"{name}.json"), os.path.join(HERE, "api", f"{name}.json")


def build_all(specs: list[dict], object_info: dict) -> dict[str, tuple[dict, dict]]:
    full = [with_widget_defaults(spec, object_info) for spec in specs]
    return {spec["name"]: (ui_format(spec, object_info), api_format(spec)) for spec in full}


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_all(specs: list[dict], object_info: dict) -> list[str]:
    write_json(LOCALE, template_texts())
    written = [LOCALE]
    for name, (ui, api) in build_all(specs, object_info).items():
        for path, data in zip(paths(name), (ui, api)):
            write_json(path, data)
            written.append(path)
    return written


THUMBNAIL_WIDTH, PICTURE_WIDTH = 480, 1200
DOCS_IMAGES = os.path.join(os.path.dirname(HERE), "docs", "images")
README_PICTURE = ("supir_restore_basic", os.path.join(DOCS_IMAGES, "basic_restore_graph.png"))


def graph_on_screen(ui: dict, margin: int = 12) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) in window pixels of the graph's groups at its opening view, within the
    window."""
    scale, (dx, dy) = ui["extra"]["ds"]["scale"], ui["extra"]["ds"]["offset"]
    boxes = [g["bounding"] for g in ui["groups"]]
    left = min(b[0] for b in boxes) + dx
    top = min(b[1] for b in boxes) + dy
    right = max(b[0] + b[2] for b in boxes) + dx
    bottom = max(b[1] + b[3] for b in boxes) + dy
    return (round(left * scale) - margin, round(top * scale) - margin,
            min(round(right * scale) + margin, WINDOW[0]), min(round(bottom * scale) + margin, WINDOW[1]))


def write_pictures(screenshots: str) -> list[str]:
    """The pictures of the workflows, from the canvas part of the editor tests' screenshots (``<name>.png`` in
    ``screenshots``, a 1600 x 1000 window at the workflow's opening view): the template browser's cards
    (``workflows/<name>.jpg``), docs/workflows.md's (``docs/images/workflows/<name>.jpg``) and README's."""
    from PIL import Image

    def save(picture, width: int, path: str, **options) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        width = min(width, picture.width)
        picture.resize((width, round(width * picture.height / picture.width)), Image.LANCZOS).save(path, **options)
        written.append(path)
    written = []
    for name in sorted(f[:-4] for f in os.listdir(screenshots) if f.endswith(".png")):
        if not os.path.exists(paths(name)[0]):
            continue
        with open(paths(name)[0]) as f:
            ui = json.load(f)
        with Image.open(os.path.join(screenshots, f"{name}.png")) as shot:
            canvas = shot.convert("RGB").crop(graph_on_screen(ui))
        save(canvas, THUMBNAIL_WIDTH, os.path.join(HERE, f"{name}.jpg"), quality=82, optimize=True)
        save(canvas, PICTURE_WIDTH, os.path.join(DOCS_IMAGES, "workflows", f"{name}.jpg"), quality=80,
             optimize=True)
        if name == README_PICTURE[0]:
            save(canvas, PICTURE_WIDTH, README_PICTURE[1], optimize=True)
    return written


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pictures"]:
        print("\n".join(write_pictures(sys.argv[2])))
        sys.exit()
    # the repository as the package supir_restore (as ComfyUI names it), without running its __init__
    package = types.ModuleType("supir_restore")
    package.__path__ = [os.path.dirname(HERE)]
    sys.modules["supir_restore"] = package
    from supir_restore.workflows.specs import SPECS
    url = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188").rstrip("/")
    with urllib.request.urlopen(url + "/object_info", timeout=60) as response:
        info = json.loads(response.read())
    for written_path in write_all(SPECS, info):
        print(written_path)
