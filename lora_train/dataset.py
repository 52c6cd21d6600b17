"""Training data for restoration LoRAs: HQ images with captions, aspect-ratio buckets and seeded random crops.

An image is assigned the bucket (a width × height of about ``resolution²`` pixels, both multiples of 64) whose
aspect ratio is nearest its own; a training sample is a random crop of the image scaled to cover its bucket.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..supir.image.io import list_images, read_images

BUCKET_MULTIPLE = 64


class DatasetError(ValueError):
    """A dataset the trainer cannot use (empty, nothing readable, a crop larger than the image)."""


@dataclass
class Sample:
    """One HQ training image: IMAGE-layout pixels :math:`(H, W, 3)` in [0, 1], its caption and its name."""
    image: torch.Tensor
    caption: str
    name: str


@dataclass
class TrainingDataset:
    """Samples, the training resolution, the buckets ``(width, height)`` and each sample's bucket index."""
    samples: list[Sample]
    resolution: int
    buckets: list[tuple[int, int]]
    bucket_of: list[int]
    skipped: list[str] = field(default_factory=list)

    def bucket_members(self) -> dict[int, list[int]]:
        """Sample indices per used bucket, in sample order."""
        members: dict[int, list[int]] = {}
        for i, b in enumerate(self.bucket_of):
            members.setdefault(b, []).append(i)
        return members


def make_buckets(resolution: int, max_aspect: float = 2.0, multiple: int = BUCKET_MULTIPLE) -> list[tuple[int, int]]:
    """Bucket sizes ``(width, height)``, multiples of ``multiple`` with ``width·height <= resolution²`` and aspect
    ratios up to ``max_aspect`` either way; ``(resolution, resolution)`` is always one of them."""
    if resolution < multiple or resolution % multiple:
        raise DatasetError(f"training resolution {resolution} must be a multiple of {multiple} (at least {multiple})")
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    width = multiple
    while width <= resolution * max_aspect:
        height = (area // width) // multiple * multiple
        if height >= multiple and max(width / height, height / width) <= max_aspect:
            buckets.add((width, height))
            buckets.add((height, width))
        width += multiple
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose log aspect ratio is nearest ``width / height`` (ties: the larger area)."""
    ratio = math.log(width / height)
    return min(range(len(buckets)), key=lambda i: (abs(math.log(buckets[i][0] / buckets[i][1]) - ratio),
                                                   -buckets[i][0] * buckets[i][1]))


def read_folder(folder: str, default_caption: str = "") -> tuple[list[Sample], list[str]]:
    """The images of ``folder`` (sorted by name) with the caption in ``<stem>.txt`` beside each (else
    ``default_caption``). Returns (samples, files skipped as unreadable or too large, with the reason)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"the dataset folder {folder!r} does not exist")
    images, names, skipped = read_images(folder, list_images(folder))
    return [Sample(image, caption_of(folder, name, default_caption), name)
            for image, name in zip(images, names)], skipped


def caption_of(folder: str, name: str, default: str) -> str:
    """The text of ``<stem>.txt`` beside image ``name``, else ``default``."""
    path = os.path.join(folder, os.path.splitext(name)[0] + ".txt")
    if not os.path.isfile(path):
        return default
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def build_dataset(samples: list[Sample], resolution: int, buckets: bool = True,
                  skipped: list[str] | None = None) -> TrainingDataset:
    """Assign buckets (or the single square bucket) to ``samples``; errors name what to fix."""
    skipped = list(skipped or [])
    if not samples:
        why = f" Unreadable: {'; '.join(skipped)}." if skipped else ""
        raise DatasetError(f"the dataset has no readable images.{why} Put PNG/JPEG/WebP images (and optional "
                           f"same-name .txt captions) into the folder.")
    sizes = make_buckets(resolution) if buckets else [(resolution, resolution)]
    bucket_of = []
    for s in samples:
        if s.image.ndim != 3 or s.image.shape[-1] != 3:
            raise DatasetError(f"{s.name}: expected an RGB image (H, W, 3), got shape {tuple(s.image.shape)}")
        h, w = s.image.shape[:2]
        bucket_of.append(nearest_bucket(w, h, sizes))
    return TrainingDataset(samples, resolution, sizes, bucket_of, skipped)


def random_crop(image: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Scale ``image`` :math:`(H, W, 3)` to cover ``size = (width, height)`` (never enlarging more than needed,
    area filter when shrinking, bicubic when enlarging), then crop ``size`` at a seeded random offset.
    Returns :math:`(height, width, 3)`."""
    width, height = size
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    x = image.movedim(-1, 0).unsqueeze(0)
    if scale != 1.0:
        new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
        mode = "area" if scale < 1 else "bicubic"
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        x = x.clamp(0, 1)
    _, _, H, W = x.shape
    top = int(torch.randint(0, H - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, W - width + 1, (1,), generator=generator))
    return x[0, :, top:top + height, left:left + width].movedim(0, -1)
