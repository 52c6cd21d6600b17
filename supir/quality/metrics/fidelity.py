"""PSNR and SSIM with the SR-paper conventions (see the package's docstring)."""
from __future__ import annotations


import kornia
import torch

from ..degradation import check_image


SSIM_WINDOW = 11
BT601_Y = (65.481, 128.553, 24.966)


def rgb_to_y(image: torch.Tensor) -> torch.Tensor:
    """BT.601 studio-swing luma, :math:`(16 + 65.481 R + 128.553 G + 24.966 B) / 255`, in [16/255, 235/255].

    Unlike ``kornia.color.rgb_to_ycbcr`` (full-range JPEG YCbCr), this is the Y that SR papers score on.
    :math:`(B, H, W, 3) \\to (B, H, W, 1)`.
    """
    check_image(image)
    weights = torch.tensor(BT601_Y, dtype=image.dtype, device=image.device)
    return ((image * weights).sum(-1, keepdim=True) + 16.0) / 255.0


def _prepare(image: torch.Tensor, reference: torch.Tensor, crop_border: int, y_channel: bool) -> tuple:
    """Checks shapes, broadcasts a single reference over the batch, crops and converts; returns float64 tensors."""
    check_image(image, "image")
    check_image(reference, "reference")
    if image.shape[1:3] != reference.shape[1:3]:
        raise ValueError(f"image is {image.shape[1]}x{image.shape[2]} but reference is "
                         f"{reference.shape[1]}x{reference.shape[2]}: metrics compare images of the same size. "
                         "Resize the restored image to the reference (or degrade with resize back).")
    if reference.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"reference batch {reference.shape[0]} does not match image batch {image.shape[0]}; "
                         "give one reference per image, or a single reference for all.")
    if crop_border < 0 or 2 * crop_border >= min(image.shape[1:3]):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {image.shape[1]}x{image.shape[2]} image; "
                         "use a border smaller than half the shorter side.")
    image, reference = image.double(), reference.double().to(image.device).expand_as(image)
    if crop_border:
        image = image[:, crop_border:-crop_border, crop_border:-crop_border]
        reference = reference[:, crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        image, reference = rgb_to_y(image), rgb_to_y(reference)
    return image, reference


def psnr(image: torch.Tensor, reference: torch.Tensor, crop_border: int = 0, y_channel: bool = True) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak 1.0, i.e. 255 on the 8-bit scale); ``inf`` for identical images.

    Args:
        image: restored IMAGE :math:`(B, H, W, 3)`.
        reference: ground truth :math:`(B, H, W, 3)` or :math:`(1, H, W, 3)`.
        crop_border: pixels removed from each side before scoring.
        y_channel: score BT.601 luma instead of RGB.

    Returns:
        :math:`(B,)` float64.
    """
    x, y = _prepare(image, reference, crop_border, y_channel)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse)


def ssim(image: torch.Tensor, reference: torch.Tensor, crop_border: int = 0, y_channel: bool = True) -> torch.Tensor:
    """Structural similarity: the mean of kornia's SSIM map over the valid window positions and the channels.

    Args and returns as :func:`psnr`; the scored area must be at least 11×11 pixels.
    """
    x, y = _prepare(image, reference, crop_border, y_channel)
    if min(x.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping; got "
                         f"{x.shape[1]}x{x.shape[2]}. Use a smaller crop_border or a larger image.")
    ssim_map = kornia.metrics.ssim(x.movedim(-1, 1), y.movedim(-1, 1), SSIM_WINDOW, max_val=1.0, eps=0.0,
                                   padding="valid")
    return ssim_map.mean(dim=(1, 2, 3))


def fidelity_metrics(image: torch.Tensor, reference: torch.Tensor, crop_border: int = 0) -> dict[str, torch.Tensor]:
    """PSNR and SSIM on Y and on RGB: ``{"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}``, each :math:`(B,)`."""
    return {f"{name}_{space}": fn(image, reference, crop_border, space == "y")
            for space in ("y", "rgb") for name, fn in (("psnr", psnr), ("ssim", ssim))}
