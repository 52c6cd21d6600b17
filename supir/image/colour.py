"""Colour fix: give a restored image the colours of a reference, normally SUPIR's stage-1 image.

Diffusion sampling restores detail but lets large-scale colour drift; the stage-1 image (the decode of the hint)
has the LQ image's colours and little detail. Both fixes are the ones of StableSR's colour correction, which SUPIR
uses, re-implemented from their definitions:

* **wavelet**: an à-trous ("with holes") wavelet decomposition with the 3×3 binomial kernel
  :math:`\\tfrac1{16}[1,2,1]^T[1,2,1]`, taps :math:`2^i` pixels apart at level :math:`i = 0..4`, replicate padding.
  The result is the high frequencies (the sum of the 5 detail bands) of the restored image plus the low
  frequencies (the residual after 5 smoothings, a low-pass of std about 13 px) of the reference.
* **AdaIN** (Huang & Belongie, ICCV 2017): each channel of each image is standardised and given the reference's
  mean and standard deviation (over all pixels).

Both are affine-equivariant per channel, so working in :math:`[0, 1]` gives what the originals do in :math:`[-1, 1]`.
The tensor ops take :math:`(B, C, H, W)`; :func:`colour_fix` takes IMAGE tensors :math:`(B, H, W, C)`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .resize import resize_image

LEVELS = 5
COLOUR_CHANNELS = {1: 1, 3: 3, 4: 3}  # channels of an IMAGE -> its colour channels (RGBA: alpha is left alone)


def atrous_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One à-trous smoothing: the binomial kernel :math:`\\tfrac1{16}[[1,2,1],[2,4,2],[1,2,1]]` with its taps
    ``dilation`` pixels apart, per channel, on the input padded by replicating its edges.

    Args:
        x: :math:`(B, C, H, W)`.

    Returns:
        :math:`(B, C, H, W)`.
    """
    c = x.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (torch.outer(taps, taps) / 16).expand(c, 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    # oneDNN's depthwise convolution is 2-3x faster on CPU in channels-last layout
    return F.conv2d(padded.contiguous(memory_format=torch.channels_last), kernel, dilation=dilation, groups=c)


def wavelet_decompose(x: torch.Tensor, levels: int = LEVELS) -> tuple[list[torch.Tensor], torch.Tensor]:
    """À-trous decomposition: with :math:`s_0 = x` and :math:`s_{i+1} = \\mathrm{blur}_{2^i}(s_i)`, band
    :math:`i` is :math:`s_i - s_{i+1}` and the residual is :math:`s_L`; so :math:`x = \\sum_i b_i + s_L`.

    Args:
        x: :math:`(B, C, H, W)`.

    Returns:
        ``levels`` detail bands, finest first, and the low-frequency residual, each :math:`(B, C, H, W)`.
    """
    bands = []
    smooth = x
    for i in range(levels):
        blurred = atrous_blur(smooth, 2 ** i)
        bands.append(smooth - blurred)
        smooth = blurred
    return bands, smooth


def wavelet_low_frequency(x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """The residual of :func:`wavelet_decompose`, without keeping the bands.

    Args:
        x: :math:`(B, C, H, W)`.

    Returns:
        :math:`(B, C, H, W)`.
    """
    for i in range(levels):
        x = atrous_blur(x, 2 ** i)
    return x


def wavelet_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """High frequencies of ``image`` plus low frequencies of ``reference``. The bands of ``image`` sum to
    ``image - low(image)``, so this is ``image - low(image) + low(reference)``.

    Args:
        image: :math:`(B, C, H, W)`.
        reference: :math:`(B, C, H, W)` or :math:`(1, C, H, W)`, the same size.

    Returns:
        :math:`(B, C, H, W)`, not clamped.
    """
    if image.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"the wavelet fix needs a reference of the image's size {tuple(image.shape[-2:])}; "
                         f"got {tuple(reference.shape[-2:])} (resize the reference first).")
    return image - wavelet_low_frequency(image, levels) + wavelet_low_frequency(reference, levels)


def adain_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """:math:`(x - \\mu_x) / \\sigma_x \\cdot \\sigma_r + \\mu_r` per image and channel, with the mean and the
    population standard deviation over all pixels. ``eps`` bounds :math:`\\sigma_x` from below so a flat channel
    becomes :math:`\\mu_r`; unlike adding it to the variance, it leaves the transferred statistics exact.

    Args:
        image: :math:`(B, C, H, W)`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`, any size.

    Returns:
        :math:`(B, C, H, W)`, not clamped.
    """
    std_x, mean_x = torch.std_mean(image, dim=(-2, -1), correction=0, keepdim=True)
    std_r, mean_r = torch.std_mean(reference, dim=(-2, -1), correction=0, keepdim=True)
    return (image - mean_x) * (std_r / std_x.clamp_min(eps)) + mean_r


COLOUR_FIXES = {"wavelet": wavelet_fix, "adain": adain_fix}


def _colour_channels(image: torch.Tensor, what: str) -> int:
    if image.ndim != 4 or image.shape[-1] not in COLOUR_CHANNELS:
        raise ValueError(f"{what} must be an IMAGE [B, H, W, C] with 1 (grey), 3 (RGB) or 4 (RGBA) channels; "
                         f"got shape {tuple(image.shape)}.")
    return COLOUR_CHANNELS[image.shape[-1]]


def colour_fix(image: torch.Tensor, reference: torch.Tensor, method: str = "wavelet",
               strength: float = 1.0) -> torch.Tensor:
    """Corrects the colours of ``image`` towards ``reference``.

    The reference is first resized to the image's size (antialiased bicubic: a proper low-pass when shrinking,
    smooth when enlarging). Grey images need a grey reference and RGB(A) images an RGB(A) one; the image's alpha
    is passed through and the reference's is ignored. The maths runs in at least float32.

    Args:
        image: the restored IMAGE :math:`(B, H, W, C)`, :math:`C \\in \\{1, 3, 4\\}`.
        reference: IMAGE :math:`(B, H', W', C')` or :math:`(1, H', W', C')`, e.g. the stage-1 image.
        method: ``"wavelet"`` or ``"adain"``.
        strength: 0 returns ``image`` (clamped), 1 the full correction, linear in between.

    Returns:
        :math:`(B, H, W, C)` clamped to :math:`[0, 1]`, in ``image``'s dtype and device.
    """
    if method not in COLOUR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}; choose one of {', '.join(COLOUR_FIXES)}.")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1; got {strength}.")
    colours = _colour_channels(image, "the image")
    if _colour_channels(reference, "the reference") != colours:
        raise ValueError(f"the image has {colours} colour channel(s) but the reference has "
                         f"{COLOUR_CHANNELS[reference.shape[-1]]}; convert both to RGB or both to grey.")
    b, h, w, _ = image.shape
    if reference.shape[0] not in (1, b):
        raise ValueError(f"the reference batch must hold 1 image or as many as the image batch ({b}); "
                         f"got {reference.shape[0]}.")
    work = torch.promote_types(image.dtype, torch.float32)
    x = image[..., :colours].to(work)
    ref = resize_image(reference[..., :colours].to(image.device, work), h, w, "bicubic")
    fixed = COLOUR_FIXES[method](x.movedim(-1, 1), ref.movedim(-1, 1)).movedim(1, -1)
    out = fixed.lerp_(x, 1.0 - strength).clamp_(0, 1).to(image.dtype)  # fixed is ours: in place saves passes
    return torch.cat([out, image[..., colours:]], dim=-1) if colours < image.shape[-1] else out
