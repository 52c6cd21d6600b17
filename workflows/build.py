"""Builds the shipped workflows from the graphs in ``specs.py``: the UI format (``workflows/<name>.json``, what
ComfyUI's template browser lists) and its API twin (``workflows/api/<name>.json``, what ``POST /prompt`` takes).
Widget order, socket types and output slots come from a live server's ``/object_info``.

Regenerate after changing a node or a spec (a ComfyUI server with this pack loaded must be running):
    python workflows/build.py http://127.0.0.1:8188
"""
from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
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
    for order, (nid, node) in enumerate(spec["nodes"].items()):
        kind = node["class_type"]
        entry = {"id": ids[nid], "type": kind, "pos": list(node["pos"]), "size": list(node.get("size", (340, 120))),
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
    # the first view clears the editor's side bar and top bar and shows the top node's title
    top = min(node["pos"][1] for node in spec["nodes"].values())
    return {"id": workflow_id(spec["name"]), "revision": 0, "last_node_id": max(ids.values()),
            "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [80, 100 - top]},
                      "info": {"description": spec["description"]}},
            "version": 0.4}


def paths(name: str) -> tuple[str, str]:
    return os.path.join(HERE, f"{name}.json"), os.path.join(HERE, "api", f"{name}.json")


def build_all(specs: list[dict], object_info: dict) -> dict[str, tuple[dict, dict]]:
    full = [with_widget_defaults(spec, object_info) for spec in specs]
    return {spec["name"]: (ui_format(spec, object_info), api_format(spec)) for spec in full}


def write_all(specs: list[dict], object_info: dict) -> list[str]:
    written = []
    for name, (ui, api) in build_all(specs, object_info).items():
        for path, data in zip(paths(name), (ui, api)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            written.append(path)
    return written


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    from specs import SPECS
    url = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188").rstrip("/")
    with urllib.request.urlopen(url + "/object_info", timeout=60) as response:
        info = json.loads(response.read())
    for written_path in write_all(SPECS, info):
        print(written_path)
