"""The pack's folders under ComfyUI's models directory."""
import os

import folder_paths


def register_model_folder() -> None:
    """Adds models/supir (also reachable through extra_model_paths.yaml as ``supir:``) and creates it and
    models/iqa, so users find where their files go."""
    default = os.path.join(folder_paths.models_dir, "supir")
    for folder in (default, iqa_dir()):
        os.makedirs(folder, exist_ok=True)
    paths, extensions = folder_paths.folder_names_and_paths.get("supir", ([], set()))
    if default not in paths:
        paths = [*paths, default]
    folder_paths.folder_names_and_paths["supir"] = (paths, set(extensions) | folder_paths.supported_pt_extensions)


def iqa_dir() -> str:
    """ComfyUI/models/iqa: the learned metrics' weight files, one folder per metric."""
    return os.path.join(folder_paths.models_dir, "iqa")
