"""Colour fix: give a restored image the colours of a reference, normally SUPIR's stage-1 image.

Diffusion sampling restores detail but lets large-scale colour drift; the stage-1 image (the decode of the hint)
has the LQ image's colours and little detail. The first two fixes are the ones of StableSR's colour correction,
which SUPIR uses, re-implemented from their definitions:

* **wavelet**: an à-trous ("with holes") wavelet decomposition with the 3×3 binomial kernel
  :math:`\\tfrac1{16}[1,2,1]^T[1,2,1]`, taps :math:`2^i` pixels apart at level :math:`i = 0..4`, replicate padding.
  The result is the high frequencies (the sum of the 5 detail bands) of the restored image plus the low
  frequencies (the residual after 5 smoothings, a low-pass of std about 13 px) of the reference.
* **AdaIN** (Huang & Belongie, ICCV 2017): each channel of each image is standardised and given the reference's
  mean and standard deviation (over all pixels).

The next three are the global transfers of ComfyUI core's Color Transfer node (``reinhard_lab``, ``mkl_lab``,
``histogram``), so they mean what users of that node know:

* **lab** (Reinhard et al., 2001): AdaIN on the CIELAB channels (sRGB, D65, 2° observer, as
  ``kornia.color.rgb_to_lab``) instead of RGB.
* **mkl** (Pitié & Kokaram, 2007, "The linear Monge-Kantorovitch linear colour mapping
  for example-based colour transfer"): the affine map
  :math:`y = T(x - \\mu_x) + \\mu_r` in CIELAB whose output has the reference's mean and full 3×3 covariance and
  moves colours least (in the mean-squared sense).
* **histogram**: per-channel exact histogram matching in RGB (each value goes to the reference value at the same
  quantile), as ``skimage.exposure.match_histograms``.

And one local fix that keeps wavelet's strengths without its halos:

* **wavelet_adaptive**: the wavelet fix with the influence of each pixel on the low-frequency correction limited
  (:func:`wavelet_adaptive_fix`).

Wavelet and AdaIN are affine-equivariant per channel, so working in :math:`[0, 1]` gives what the originals do in
:math:`[-1, 1]`; the others take sRGB in :math:`[0, 1]`. The tensor ops take :math:`(B, C, H, W)`;
:func:`colour_fix` takes IMAGE tensors :math:`(B, H, W, C)`.
"""
from __future__ import annotations

import kornia.color
import torch
import torch.nn.functional as F

from .resize import resize_image

LEVELS = 5
ADAPTIVE_LIMIT = 0.1  # wavelet_adaptive's τ: largest colour difference (RGB, [0, 1]) a pixel fully contributes
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


def in_lab(transfer, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Runs a colour transfer on the CIELAB values of sRGB images and converts the result back (not clamped).

    A grey image is taken as neutral RGB (the same value in R, G and B) and the mean of the result's RGB is
    returned, so the grey channel gets the transfer of L* alone (a* and b* stay 0 up to rounding).

    Args:
        transfer: a function of :math:`(B, 3, H, W)` CIELAB image and :math:`(B \\text{ or } 1, 3, H', W')` CIELAB
            reference returning the image's new CIELAB values :math:`(B, 3, H, W)`.
        image: :math:`(B, C, H, W)` sRGB in :math:`[0, 1]`, :math:`C \\in \\{1, 3\\}`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`.

    Returns:
        :math:`(B, C, H, W)` sRGB.
    """
    grey = image.shape[1] == 1
    if grey:
        image, reference = image.expand(-1, 3, -1, -1), reference.expand(-1, 3, -1, -1)
    rgb = kornia.color.lab_to_rgb(transfer(kornia.color.rgb_to_lab(image), kornia.color.rgb_to_lab(reference)),
                                  clip=False)
    return rgb.mean(1, keepdim=True) if grey else rgb


def lab_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Reinhard's colour transfer: :func:`adain_fix` on the L*, a*, b* channels.

    Args:
        image: :math:`(B, C, H, W)` sRGB, :math:`C \\in \\{1, 3\\}`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`, any size.

    Returns:
        :math:`(B, C, H, W)`, not clamped.
    """
    return in_lab(adain_fix, image, reference)


def mean_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image channel mean and population covariance over all pixels.

    Args:
        x: :math:`(B, C, H, W)`.

    Returns:
        mean :math:`(B, C, 1)` and covariance :math:`(B, C, C)`.
    """
    flat = x.flatten(2)
    mean = flat.mean(-1, keepdim=True)
    centred = flat - mean
    return mean, centred @ centred.transpose(1, 2) / flat.shape[-1]


def mkl_transfer(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Monge-Kantorovich linear transfer (Pitié & Kokaram 2007) in the channel space it is given.

    With means :math:`\\mu_x, \\mu_r` and covariances :math:`\\Sigma_x, \\Sigma_r` over all pixels,

    .. math::
        T = \\Sigma_x^{-1/2} \\left(\\Sigma_x^{1/2} \\Sigma_r \\Sigma_x^{1/2}\\right)^{1/2} \\Sigma_x^{-1/2},
        \\qquad y = T (x - \\mu_x) + \\mu_r,

    the symmetric positive map with :math:`T \\Sigma_x T = \\Sigma_r` (the output has the reference's mean and
    covariance) that moves the colours least. Square roots come from ``eigh``; the square roots of
    :math:`\\Sigma_x`'s eigenvalues are bounded below by ``eps`` so a flat or rank-deficient image stays finite (its
    missing directions go to :math:`\\mu_r`), as in ComfyUI core's ``mkl_lab``.

    Args:
        image: :math:`(B, C, H, W)`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`, any size.

    Returns:
        :math:`(B, C, H, W)`.
    """
    mean_x, cov_x = mean_covariance(image)
    mean_r, cov_r = mean_covariance(reference)
    val_x, vec_x = torch.linalg.eigh(cov_x)
    sqrt_x = val_x.clamp_min(0).sqrt().clamp_min(eps)
    half = (vec_x * sqrt_x.unsqueeze(-2)) @ vec_x.transpose(-1, -2)  # Σx^½
    inv_half = (vec_x / sqrt_x.unsqueeze(-2)) @ vec_x.transpose(-1, -2)  # Σx^-½
    val_m, vec_m = torch.linalg.eigh(half @ cov_r @ half)
    middle = (vec_m * val_m.clamp_min(0).sqrt().unsqueeze(-2)) @ vec_m.transpose(-1, -2)
    transfer = inv_half @ middle @ inv_half
    flat = image.flatten(2)
    return (transfer @ (flat - mean_x) + mean_r).view_as(image)


def mkl_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """:func:`mkl_transfer` on the L*, a*, b* channels (ComfyUI core's ``mkl_lab``).

    Args:
        image: :math:`(B, C, H, W)` sRGB, :math:`C \\in \\{1, 3\\}`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`, any size.

    Returns:
        :math:`(B, C, H, W)`, not clamped.
    """
    return in_lab(mkl_transfer, image, reference)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation as ``numpy.interp``: ``xp`` increasing, values outside it take the end
    values of ``fp``.

    Args:
        x: :math:`(N,)`.
        xp, fp: :math:`(M,)`.

    Returns:
        :math:`(N,)`.
    """
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    right = torch.searchsorted(xp, x, right=True).clamp_(1, xp.numel() - 1)
    x0, x1 = xp[right - 1], xp[right]
    t = ((x - x0) / (x1 - x0)).clamp_(0, 1)
    return torch.lerp(fp[right - 1], fp[right], t)


def match_histogram(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Exact histogram matching of one channel: every distinct value :math:`v` goes to the reference value at
    :math:`v`'s quantile, :math:`y = F_r^{-1}(F_x(v))`, with :math:`F` the empirical cumulative distributions
    (counts up to and including the value over the total) and :math:`F_r^{-1}` piecewise linear between the
    reference's distinct values, as ``skimage.exposure.match_histograms`` does for float images.

    Args:
        values: :math:`(N,)`.
        reference: :math:`(M,)`.

    Returns:
        :math:`(N,)`.
    """
    src, inverse, src_counts = torch.unique(values, return_inverse=True, return_counts=True)
    ref, ref_counts = torch.unique(reference, return_counts=True)
    src_quantiles = src_counts.cumsum(0).to(values.dtype) / values.numel()
    ref_quantiles = ref_counts.cumsum(0).to(values.dtype) / reference.numel()
    return interp(src_quantiles, ref_quantiles, ref)[inverse]


def histogram_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel :func:`match_histogram` against the reference (its image of the same index, or its
    only one).

    Args:
        image: :math:`(B, C, H, W)`.
        reference: :math:`(B, C, H', W')` or :math:`(1, C, H', W')`, any size.

    Returns:
        :math:`(B, C, H, W)`, within the reference's range.
    """
    out = torch.empty_like(image)
    for b in range(image.shape[0]):
        ref = reference[min(b, reference.shape[0] - 1)]
        for c in range(image.shape[1]):
            out[b, c] = match_histogram(image[b, c].flatten(), ref[c].flatten()).view_as(image[b, c])
    return out


def limit_difference(difference: torch.Tensor, limit: float) -> torch.Tensor:
    """Shrinks each pixel's colour-difference vector to length at most ``limit``, keeping its direction:
    :math:`\\psi_\\tau(e) = e \\min(1, \\tau / \\lVert e \\rVert_2)`, the norm over the channels.

    Args:
        difference: :math:`(B, C, H, W)`.

    Returns:
        :math:`(B, C, H, W)`.
    """
    norm = torch.linalg.vector_norm(difference, dim=1, keepdim=True)
    return difference * (limit / norm.clamp_min(limit))


def wavelet_adaptive_fix(image: torch.Tensor, reference: torch.Tensor, limit: float = ADAPTIVE_LIMIT,
                         levels: int = LEVELS) -> torch.Tensor:
    """The wavelet fix with each pixel's share of the low-frequency correction limited.

    The wavelet fix is :math:`y = x + L(r - x)` (:math:`L` the à-trous low-pass, linear, so
    :math:`L(r) - L(x) = L(r - x)`): every pixel's colour difference :math:`r - x` is spread over a neighbourhood
    about 30 px wide. Where the restored image departs strongly from the reference (an edge the sampler made
    darker or sharper, an object it added), that difference is content, not a colour cast, and spreading it
    paints a bright or dark halo around the contour. The adaptive fix limits each pixel's difference vector
    before the low-pass,

    .. math::
        y = x + L\\bigl(\\psi_\\tau(r - x)\\bigr), \\qquad
        \\psi_\\tau(e) = e \\, \\min\\!\\left(1, \\frac{\\tau}{\\lVert e \\rVert_2}\\right),

    (the norm over the colour channels, so the direction, the hue of the difference, is kept). Differences up to
    :math:`\\tau` (colour casts: a few hundredths to a tenth) pass whole, so where :math:`\\lVert r - x \\rVert
    \\le \\tau` everywhere this is exactly the wavelet fix; a departure of any size moves its neighbours by at
    most :math:`\\tau` times the kernel weight it holds, so no halo is brighter than :math:`\\tau`.
    :math:`\\tau = 0.1` (of the :math:`[0, 1]` range) was chosen on the benchmark photographs
    (``bench/colour_fix.py``).

    SeedVR2's ComfyUI nodes (``wavelet_adaptive``) also start from the wavelet fix and act where the restored image
    departs from the reference, but judge the departure by HSV saturation and blend in a saturation histogram
    match through a sigmoid mask; this fix follows the same idea (only strong departures are treated) with a
    bound on the correction that can be stated, and without a second transfer.

    Args:
        image: :math:`(B, C, H, W)`.
        reference: :math:`(B, C, H, W)` or :math:`(1, C, H, W)`, the same size.
        limit: :math:`\\tau`, positive.

    Returns:
        :math:`(B, C, H, W)`, not clamped.
    """
    if image.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"the wavelet fix needs a reference of the image's size {tuple(image.shape[-2:])}; "
                         f"got {tuple(reference.shape[-2:])} (resize the reference first).")
    if not limit > 0:
        raise ValueError(f"the adaptive wavelet fix needs a positive limit; got {limit}.")
    return image + wavelet_low_frequency(limit_difference(reference - image, limit), levels)


COLOUR_FIXES = {"wavelet": wavelet_fix, "adain": adain_fix, "lab": lab_fix, "mkl": mkl_fix,
                "histogram": histogram_fix, "wavelet_adaptive": wavelet_adaptive_fix}


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
        method: a key of :data:`COLOUR_FIXES`.
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
