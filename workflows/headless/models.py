"""Model files a server does not have: ComfyUI refuses such a workflow with "Value not in list: supir_name:
'SUPIR-v0Q.ckpt' not in []"; this says which folder of the server's ``models`` the file goes in and where to get it.

The table covers this pack's loaders and the core loaders its workflows use; tests/host/test_client_host.py reads
the same from the nodes' own file lists (``folder_paths.get_filename_list`` of each folder) and fails when the two
differ."""
from __future__ import annotations

import re
from typing import Any

# Input name -> the ComfyUI models folder its file list comes from, wherever the name is used.
FOLDER_OF_INPUT = {"ckpt_name": "checkpoints", "supir_name": "supir", "stablesr_name": "stablesr",
                   "cfw_name": "stablesr", "lora_name": "loras", "vae_name": "vae", "unet_name": "diffusion_models"}
# Names that mean different folders in different nodes.
FOLDER_OF_NODE_INPUT = {("SUPIRLoadVLM", "model_name"): "vlm",
                        ("SUPIRConvertWeights", "source"): "supir"}  # "supir/<file>" or "stablesr/<file>"
LORA_SLOT = re.compile(r"lora(_[a-z]+)?_\d+")  # SUPIR LoRA Stack, SUPIR LoRA Region Blend: lora_1, lora_inside_1...
# Where a file of each folder goes, as the user reads it (ComfyUI/models/...).
WHERE = {"stablesr": "models/stablesr/ (or models/checkpoints/, where Load Checkpoint also reads it)",
         "vlm": "models/vlm/ (the model's folder: config.json, weights, tokenizer and processor files)"}
README_MODELS = 'README.md, section "Models"'


def model_folder(class_type: str, input_name: str) -> str | None:
    """The models folder a loader input takes its file from (ComfyUI's folder name), or None for other inputs."""
    if (class_type, input_name) in FOLDER_OF_NODE_INPUT:
        return FOLDER_OF_NODE_INPUT[(class_type, input_name)]
    if LORA_SLOT.fullmatch(input_name):
        return "loras"
    return FOLDER_OF_INPUT.get(input_name)


def missing_file(class_type: str, error: dict) -> tuple[str, str] | None:
    """(file, folder) when a node's validation error says a loader's file is not on the server."""
    info = error.get("extra_info") or {}
    if error.get("type") != "value_not_in_list" or not isinstance(info.get("received_value"), str):
        return None
    folder = model_folder(class_type, str(info.get("input_name")))
    return (info["received_value"], folder) if folder else None


def any_missing(body: Any) -> bool:
    """Whether an invalid prompt's answer (HTTP 400) names a model file the server does not have."""
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    return isinstance(node_errors, dict) and any(
        missing_file(info.get("class_type", ""), e) for info in node_errors.values() if isinstance(info, dict)
        for e in info.get("errors", []) if isinstance(e, dict))


def where_it_goes(file: str, folder: str, server_folders: dict[str, list[str]]) -> str:
    """The line that says where ``file`` goes; ``server_folders`` are the server's own folder paths by name (GET
    /experiment/models), quoted when known."""
    paths = server_folders.get(folder) or []
    on_server = f" (on the server: {paths[0]})" if paths else ""
    return (f"{file} is not on the server: put it in ComfyUI's {WHERE.get(folder, f'models/{folder}/')}{on_server} "
            f"and run again; where to get it: {README_MODELS}")
