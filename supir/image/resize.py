"""Resize policy for restoration at any resolution.

SUPIR samples at the output resolution, and the SDXL VAE needs sides that are multiples of 8 (SUPIR's own scripts
use 64, its demo 32). So a restore runs in three sizes:

* the **target** size, ``round(side × scale)`` per side (halves round up), which the final image must have;
* the **sampling** size, each target side snapped to the *nearest* multiple (halves up, never below one multiple),
  at which the image is encoded, sampled and colour-fixed;
* the target size again, by resizing the restored image back at the end.

Rounding to the nearest multiple (rather than always up or down) keeps the aspect-ratio distortion of the sampling
size to at most half a multiple per side, and the final resize undoes it exactly.

Images follow ComfyUI's IMAGE convention, float tensors :math:`(B, H, W, C)` in :math:`[0, 1]`.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION
MULTIPLES = (64, 32, 8)
RESIZE_METHODS = ("lanczos", "bicubic", "bilinear", "area")


def _check_side(side: int, what: str) -> None:
    if not 1 <= side <= MAX_SIDE:
        fix = ("Lower the scale factor (or tile the image) for larger outputs." if side > MAX_SIDE else
               "Give a size of at least 1 pixel.")
        raise ValueError(f"{what} is {side} pixels; sides must be between 1 and {MAX_SIDE} pixels. {fix}")


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The exact target size, ``floor(side × scale + 1/2)`` per side.

    Raises:
        ValueError: for a scale that is not a positive finite number, or a side that becomes 0 or exceeds
            :data:`MAX_SIDE`.
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the scale factor must be a positive number; got {scale}.")
    sides = []
    for name, side in (("height", height), ("width", width)):
        scaled = math.floor(side * scale + 0.5)
        if scaled < 1:
            raise ValueError(f"scale {scale} turns the {side}-pixel {name} into 0 pixels; "
                             f"use a scale of at least {0.5 / side:.4g}.")
        _check_side(scaled, f"the scaled {name} ({side} × {scale})")
        sides.append(scaled)
    return sides[0], sides[1]


def snap(side: int, multiple: int) -> int:
    """``side`` rounded to the nearest multiple of ``multiple`` (halves up), at least ``multiple``.

    Raises:
        ValueError: unless ``multiple`` is a positive multiple of 8 (the VAE's downscale factor).
    """
    if multiple < 8 or multiple % 8:
        raise ValueError(f"the size multiple must be a positive multiple of 8 (the VAE's downscale factor), "
                         f"such as {', '.join(map(str, MULTIPLES))}; got {multiple}.")
    return max(multiple, (side + multiple // 2) // multiple * multiple)


def sampling_size(height: int, width: int, scale: float, multiple: int) -> tuple[int, int]:
    """The size to restore at: :func:`scaled_size` with each side :func:`snap`-ped to ``multiple``.

    Raises:
        ValueError: as :func:`scaled_size` and :func:`snap`, or when a snapped side exceeds :data:`MAX_SIDE`.
    """
    target = scaled_size(height, width, scale)
    snapped = tuple(snap(side, multiple) for side in target)
    for name, side in zip(("height", "width"), snapped):
        _check_side(side, f"the sampling {name} (the target {name} rounded to a multiple of {multiple})")
    return snapped[0], snapped[1]


def _lanczos(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's Lanczos (a = 3, antialiased) on every plane of :math:`(B, C, H, W)`, in float32 ("F" images),
    so nothing is rounded to 8 bits and any channel count works."""
    planes = x.to("cpu", torch.float32).contiguous().numpy()
    out = np.stack([np.stack([np.asarray(Image.fromarray(plane).resize((width, height), Image.Resampling.LANCZOS))
                              for plane in image]) for image in planes])
    return torch.from_numpy(out).to(x.device)


def resize_image(image: torch.Tensor, height: int, width: int, method: str = "lanczos") -> torch.Tensor:
    """Resizes an IMAGE to ``height`` × ``width``.

    Methods: ``lanczos`` (Pillow, float32), ``bicubic`` and ``bilinear`` (antialiased when shrinking, like Pillow),
    ``area`` (box average; for shrinking). Every channel (alpha too) is resized alike.

    Args:
        image: :math:`(B, H, W, C)` in :math:`[0, 1]`.

    Returns:
        :math:`(B, height, width, C)`, clamped to :math:`[0, 1]`, in the input's dtype.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {', '.join(RESIZE_METHODS)}.")
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C]; got a tensor of shape {tuple(image.shape)}.")
    _check_side(height, "the height to resize to")
    _check_side(width, "the width to resize to")
    if tuple(image.shape[1:3]) == (height, width):
        return image
    # interpolation kernels exist in float32/float64 only (no antialiased bfloat16 on CPU)
    x = image.movedim(-1, 1).to(torch.promote_types(image.dtype, torch.float32))
    if method == "lanczos":
        out = _lanczos(x, height, width)
    else:
        out = F.interpolate(x, size=(height, width), mode=method, antialias=method != "area")
    return out.movedim(1, -1).clamp(0, 1).to(image.dtype)


def snap_to_multiple(image: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """An IMAGE resized (bicubic) so both sides are :func:`snap`-ped to ``multiple``; unchanged if they are."""
    h, w = image.shape[1:3]
    th, tw = snap(h, multiple), snap(w, multiple)
    if (th, tw) == (h, w):
        return image
    logging.info("SUPIR: resizing the image from %dx%d to %dx%d (multiples of %d)", w, h, tw, th, multiple)
    return resize_image(image, th, tw, "bicubic")
