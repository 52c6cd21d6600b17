"""IMAGE tensors (ComfyUI's convention: float :math:`(B, H, W, C)` in :math:`[0, 1]`) in the shapes the pack
needs, and image files read the one way the pack reads them (training data, benchmark folders)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] with 1 (grey), 3 or 4 (alpha dropped) channels -> [B,H,W,3]."""
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B,H,W,C], got a tensor of shape {list(image.shape)}")
    c = image.shape[-1]
    if c == 3:
        return image
    if c == 4:
        return image[..., :3]
    if c == 1:
        return image.expand(-1, -1, -1, 3)
    raise ValueError(f"the image has {c} channels; SUPIR takes grey (1), RGB (3) or RGBA (4) images")


class ImageFileError(ValueError):
    """An image file that cannot be used (unreadable, damaged, or too large to decode safely); names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def read_image(path: str) -> torch.Tensor:
    """An image file as IMAGE-layout RGB :math:`(H, W, 3)` float32 in [0, 1], upright per its EXIF orientation
    (alpha dropped, grey expanded). An image over Pillow's pixel limit (a decompression bomb) is refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageFileError(path, f"refused, the image is too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for unreadable, truncated or foreign files
        raise ImageFileError(path, f"cannot be read as an image ({type(e).__name__}: {e}); remove or replace "
                                   "the file") from e
    return pil_to_image(rgb)


def image_to_pil(image: torch.Tensor) -> Image.Image:
    """:math:`(H, W, 3)` in [0, 1] -> 8-bit RGB PIL image."""
    return Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def pil_to_image(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> :math:`(H, W, 3)` float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()) / 255.0


def list_images(folder: str) -> list[str]:
    """The names of the image files in ``folder`` (by extension), sorted."""
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))


def image_names(folder: str, described: str) -> list[str]:
    """The image files in ``folder``, sorted by name; ``described`` names the folder in the errors for a folder
    that does not exist or holds no images."""
    if not os.path.isdir(folder):
        raise ValueError(f"{described} does not exist.")
    names = list_images(folder)
    if not names:
        raise ValueError(f"{described} has no images ({', '.join(IMAGE_EXTENSIONS)}); put the images in it.")
    return names


def read_images(folder: str, names: list[str]) -> tuple[list[torch.Tensor], list[str], list[str]]:
    """Reads ``names`` from ``folder``; a file that cannot be used is skipped, not fatal.
    Returns (images, names of the images read, skipped files with the reason)."""
    images, read, skipped = [], [], []
    for name in names:
        try:
            images.append(read_image(os.path.join(folder, name)))
            read.append(name)
        except ImageFileError as e:
            skipped.append(f"{name}: {e.reason}")
    return images, read, skipped
