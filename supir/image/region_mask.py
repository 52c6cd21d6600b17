"""Region masks for the LoRA region blend: a MASK brought to latent resolution, and the masked mix (no ComfyUI)."""
from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F

ASPECT_TOLERANCE = 0.2  # SUPIR Resize For Restore's snapping to multiples changes an image's aspect by a few %


class RegionMaskError(ValueError):
    """A region mask that does not fit the image being sampled."""


def check_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as [B, H, W] ([H, W] gets a batch of 1); RegionMaskError for another shape or non-finite values."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise RegionMaskError(f"the region mask has shape {tuple(mask.shape)}; connect a MASK ([H, W] or [B, H, W]), "
                              f"e.g. from Load Image (alpha) or a mask editor")
    if not torch.isfinite(mask).all():
        raise RegionMaskError("the region mask contains NaN or infinite values; connect a mask with values in [0, 1]")
    return mask


def latent_mask(mask: torch.Tensor, height: int, width: int, batch: int, feather: float = 0.0) -> torch.Tensor:
    """Per-latent-pixel weight of the inside stack, [1 or batch, 1, height, width] in [0, 1]: ``mask`` ([H, W] or
    [B, H, W], 1 = inside) clamped to [0, 1], resized to the latent (bilinear, antialiased when shrinking) and blurred
    by a Gaussian of std ``feather`` latent pixels (borders replicated)."""
    mask = check_mask(mask)
    if mask.shape[0] not in (1, batch):
        raise RegionMaskError(f"the region mask has {mask.shape[0]} masks for a batch of {batch} latents; give one "
                              f"mask for the whole batch or one per image")
    mask_aspect, latent_aspect = mask.shape[-1] / mask.shape[-2], width / height
    if abs(math.log(mask_aspect / latent_aspect)) > math.log1p(ASPECT_TOLERANCE):
        raise RegionMaskError(
            f"the region mask is {mask.shape[-1]}x{mask.shape[-2]} px but the image being sampled is {width * 8}x"
            f"{height * 8} px (aspect {mask_aspect:.3f} vs {latent_aspect:.3f}); draw the mask on the image being "
            f"restored, or resize it to that size")
    weights = F.interpolate(mask.float().clamp(0, 1)[:, None], size=(height, width), mode="bilinear",
                            align_corners=False, antialias=True)
    if feather > 0:
        size = 2 * math.ceil(3 * feather) + 1
        weights = kornia.filters.gaussian_blur2d(weights, (size, size), (feather, feather), border_type="replicate")
    return weights.clamp(0, 1)


def masked_mix(weights: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """``weights·inside + (1 − weights)·outside``; weights [1 or B, 1, H, W] broadcast over channels of [B, C, H, W]
    (exactly ``inside`` where the weight is 1 and ``outside`` where it is 0)."""
    return weights * inside + (1 - weights) * outside
