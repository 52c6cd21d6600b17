"""Checks of what users hand the pack, made before any work starts: output names the file system will take, and
tensors (images, latents, weight files) free of NaN and infinity. Each error names the input or file and the fix."""
from __future__ import annotations

import os
import re

import torch

NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, btrfs, APFS, NTFS)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_file_name(name: str, what: str, suffix: str = "") -> None:
    """``name`` is one file or folder name that the file system takes once ``suffix`` (what the pack appends, e.g.
    ``.safetensors``) is added: not empty, no NUL, control characters or newlines, no folder separators, not too
    long.

    Raises:
        ValueError: naming ``what`` (e.g. "lora_name"), the problem and the fix.
    """
    if not name.strip():
        raise ValueError(f"{what} is empty; give a file name, e.g. 'my_restoration'.")
    if found := _CONTROL.search(name):
        raise ValueError(f"{what} {name!r} contains the control character {found.group()!r} (a newline, tab or NUL "
                         "the file system refuses or mangles); remove it.")
    if name in (".", ".."):
        raise ValueError(f"{what} {name!r} is not a file name; give a name such as 'my_restoration'.")
    if "/" in name or "\\" in name:
        raise ValueError(f"{what} {name[:60]!r} is one name, without folders: remove the '/' and '\\'.")
    size = len((name + suffix).encode("utf-8"))
    if size > NAME_MAX:
        room = NAME_MAX - len(suffix.encode("utf-8"))
        raise ValueError(f"{what} {name[:40]!r}… is too long: the file name{' with ' + repr(suffix) if suffix else ''} "
                         f"is {size} bytes, the file system takes at most {NAME_MAX}; shorten it to at most "
                         f"{room} bytes.")


def check_filename_prefix(prefix: str, what: str, suffix: str = "") -> None:
    """A ComfyUI ``filename_prefix`` (``folder/name``, under the output folder): every folder and the name pass
    :func:`check_file_name`, the name with ``suffix`` (the counter and extension appended to it)."""
    if not prefix.strip():
        raise ValueError(f"{what} is empty; give a name such as 'supir/result' (a folder and a file name under "
                         "ComfyUI's output folder).")
    parts = re.split(r"[/\\]", prefix)
    if os.path.isabs(prefix) or ".." in parts:
        raise ValueError(f"{what} {prefix!r} must stay inside ComfyUI's output folder: no absolute path and no "
                         "'..'; give e.g. 'supir/result'.")
    *folders, name = parts
    for folder in folders:
        if folder:
            check_file_name(folder, f"{what} (folder {folder!r})")
    if not name:
        raise ValueError(f"{what} {prefix!r} ends with a folder separator; add a file name, e.g. '{prefix}result'.")
    check_file_name(name, what, suffix)


def non_finite_count(tensor: torch.Tensor) -> int:
    """How many values of ``tensor`` are NaN or infinite (0 for integer and boolean tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    if tensor.dtype.itemsize == 1:  # fp8: torch has no isfinite for it; fp16 holds every fp8 value, NaN and inf
        tensor = tensor.to(torch.float16)
    return int((~torch.isfinite(tensor)).sum())


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Raises a ValueError naming ``what`` and the ``fix`` when ``tensor`` holds NaN or infinite values."""
    bad = non_finite_count(tensor)
    if bad:
        raise ValueError(f"{what} contains {bad} NaN or infinite value{'s' if bad > 1 else ''} (of "
                         f"{tensor.numel()}); {fix}")


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding NaN or infinite values, in order."""
    return [name for name, t in tensors.items() if non_finite_count(t)]


IMAGE_FIX = ("the node that made it produced invalid pixels (often a VAE decode overflowing in fp16); re-create it, "
             "e.g. with the VAE in fp32 or bf16 (--fp32-vae or --bf16-vae).")
LATENT_FIX = ("the node that made it produced invalid values (often a VAE encode overflowing in fp16, or a sampler "
              "that diverged); re-create it, e.g. with the VAE in fp32 or bf16 (--fp32-vae or --bf16-vae).")


def check_finite_image(image: torch.Tensor, what: str) -> None:
    """An IMAGE input with pixels, free of NaN and infinity; ``what`` names the input (e.g. "image")."""
    if image.numel() == 0:
        raise ValueError(f"{what} is empty (shape {list(image.shape)}: no image, or a side of 0 px); connect a node "
                         "that gives at least one image of at least 1x1 px.")
    check_finite(image, what, IMAGE_FIX)


def check_finite_latent(samples: torch.Tensor, what: str) -> None:
    """A LATENT's samples free of NaN and infinity; ``what`` names the input (e.g. "hint")."""
    check_finite(samples, what, LATENT_FIX)
