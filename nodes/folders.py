"""The pack's folders under ComfyUI's models directory, and folders of images under its input directory."""
import logging
import os

import folder_paths


MODEL_FOLDERS = ("supir", "stablesr")


def register_model_folder() -> None:
    """Adds models/supir and models/stablesr (also reachable through extra_model_paths.yaml as ``supir:`` and
    ``stablesr:``) and creates them and models/iqa, so users find where their files go."""
    for name in MODEL_FOLDERS:
        default = os.path.join(folder_paths.models_dir, name)
        os.makedirs(default, exist_ok=True)
        paths, extensions = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | folder_paths.supported_pt_extensions)
    os.makedirs(iqa_dir(), exist_ok=True)


def iqa_dir() -> str:
    """ComfyUI/models/iqa: the learned metrics' weight files, one folder per metric."""
    return os.path.join(folder_paths.models_dir, "iqa")


def input_subfolder(folder: str) -> str:
    """The absolute path of ``folder``, a path relative to ComfyUI's input directory ("" is the directory itself).

    The rule is ComfyUI's own for its input directory (uploads, /view): the normalised path must stay inside it, so
    ``..`` that leaves it is refused, while symbolic links inside it are followed as Load Image follows them. The
    path must be relative, as the nodes' inputs say.

    Raises:
        ValueError: an absolute path or one that leaves the input directory, or a folder that does not exist.
    """
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
    line = f"skipped {len(skipped)} unreadable or too large: " + "; ".join(skipped)
    logging.warning("SUPIR: %s", line)
    return line
