"""The pack's folders under ComfyUI's models directory, and folders of images under its input directory."""
import logging
import os
import re

import folder_paths

from ..supir.checks import check_file_name


def register_model_folder() -> None:
    """Adds models/supir, models/stablesr and the vision-language model folders models/vlm and models/LLM (also
    reachable through extra_model_paths.yaml as ``supir:``, ``stablesr:`` and ``vlm:``), and creates models/supir,
    models/stablesr, models/vlm and models/iqa, so users find where their files go."""
    supir, stablesr, vlm = (os.path.join(folder_paths.models_dir, name) for name in ("supir", "stablesr", "vlm"))
    for folder in (supir, stablesr, vlm, iqa_dir()):
        os.makedirs(folder, exist_ok=True)
    register("supir", [supir], folder_paths.supported_pt_extensions)
    register("stablesr", [stablesr], folder_paths.supported_pt_extensions)
    register("vlm", [vlm, os.path.join(folder_paths.models_dir, "LLM")], set())


def register(name: str, defaults: list[str], extensions: set[str]) -> None:
    """``defaults`` appended to the folder list ``name`` (after any from extra_model_paths.yaml)."""
    paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = [*paths, *(d for d in defaults if d not in paths)]
    folder_paths.folder_names_and_paths[name] = (paths, set(known) | set(extensions))


def vlm_folders() -> dict[str, str]:
    """The vision-language model folders (sub-folders with a config.json) of models/vlm and models/LLM, by name;
    where two have the same name, the first listed folder's."""
    found = {}
    for root in folder_paths.get_folder_paths("vlm") if "vlm" in folder_paths.folder_names_and_paths else []:
        if os.path.isdir(root):
            for name in sorted(os.listdir(root)):
                if name not in found and os.path.isfile(os.path.join(root, name, "config.json")):
                    found[name] = os.path.join(root, name)
    return found


def iqa_dir() -> str:
    """ComfyUI/models/iqa: the learned metrics' weight files, one folder per metric."""
    return os.path.join(folder_paths.models_dir, "iqa")


def input_subfolder(folder: str) -> str:
    """The absolute path of ``folder``, a path relative to ComfyUI's input directory ("" is the directory itself).

    The rule is ComfyUI's own for its input directory (uploads, /view): the normalised path must stay inside it, so
    ``..`` that leaves it is refused, while symbolic links inside it are followed as Load Image follows them. The
    path must be relative, as the nodes' inputs say.

    Raises:
        ValueError: a folder name the file system cannot have (a control character, too long), an absolute path or
            one that leaves the input directory, or a folder that does not exist.
    """
    parts = re.split(r"[/\\]", folder.strip())
    for part in parts:
        if part not in ("", ".", ".."):
            check_file_name(part, "folder" if len(parts) == 1 else f"folder {folder[:60]!r}: its part")
    root = os.path.abspath(folder_paths.get_input_directory())
    relative = os.path.normpath(folder.strip() or ".")
    path = os.path.abspath(os.path.join(root, relative))
    if os.path.isabs(relative) or os.path.commonpath((root, path)) != root:
        raise ValueError(f"folder {folder!r} must be a path inside ComfyUI's input directory ({root}), e.g. "
                         "'benchmark/hq'; absolute paths and '..' that leave it are not allowed.")
    if not os.path.isdir(path):
        raise ValueError(f"folder {folder!r} does not exist in ComfyUI's input directory: create {path} and put the "
                         "images in it.")
    return path


def skipped_report(skipped: list[str]) -> str:
    """The report line for image files a folder node skipped ("" when none were), also logged as a warning."""
    if not skipped:
        return ""
    line = f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''}: " + "; ".join(skipped)
    logging.warning("SUPIR: %s", line)
    return line
