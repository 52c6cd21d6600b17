"""IMAGE tensors (ComfyUI's convention: float :math:`(B, H, W, C)` in :math:`[0, 1]`) in the shapes the pack
needs."""
from __future__ import annotations

import torch


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
