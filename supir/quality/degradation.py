"""Synthetic degradations for restoration benchmarks: fixed presets and Real-ESRGAN's second-order pipeline.

Images follow ComfyUI's IMAGE convention, float tensors :math:`(B, H, W, 3)` in :math:`[0, 1]`; filters and resizes
run on :math:`(B, 3, H, W)` views internally. Randomness comes only from the ``torch.Generator`` passed in, so a seed
fixes the result. Noise levels are on the 0-255 scale, as in the papers.

Second-order pipeline: Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"
(ICCVW 2021), with the ranges of its ``train_realesrgan_x4plus.yml``; the lighter ranges are StableSR's
(``v2-finetune_text_T_512.yaml``, also used by SeeSR). Kernel formulas follow the Real-ESRGAN paper.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from PIL import Image

from ..image.io import image_to_pil, pil_to_image

MAX_KERNEL_SIZE = 21
KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
ISOTROPIC_KINDS = ("iso", "generalized_iso", "plateau_iso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


def check_image(image: torch.Tensor, what: str = "image") -> None:
    """Raises a ValueError unless ``image`` is an RGB IMAGE tensor :math:`(B, H, W, 3)`."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"{what} must be an RGB IMAGE tensor [B, H, W, 3]; got shape {tuple(image.shape)}. "
                         "Convert grayscale or RGBA images to RGB first (e.g. drop the alpha channel).")


def _bchw(image: torch.Tensor) -> torch.Tensor:
    return image.movedim(-1, 1)


def _bhwc(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


# ----------------------------------------------------------------------------------------------------------------
# Blur kernels. Each is a normalised (K, K) float64 tensor, centred on the middle tap of an odd K.


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number; got {kernel_size}.")


def _mahalanobis_sq(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """:math:`c^T \\Sigma^{-1} c` at every tap offset :math:`c = (x, y)`, with
    :math:`\\Sigma = R_\\theta \\operatorname{diag}(\\sigma_x^2, \\sigma_y^2) R_\\theta^T`. Returns :math:`(K, K)`."""
    _check_kernel_size(kernel_size)
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"blur sigmas must be positive; got sigma_x={sigma_x}, sigma_y={sigma_y}.")
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    precision = rot @ torch.diag(torch.tensor([sigma_x ** -2, sigma_y ** -2], dtype=torch.float64)) @ rot.T
    ax = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    offsets = torch.stack([xx, yy], dim=-1)
    return torch.einsum("hwi,ij,hwj->hw", offsets, precision, offsets)


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float | None = None,
                    theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian :math:`\\propto \\exp(-\\tfrac12 c^T \\Sigma^{-1} c)`; isotropic when ``sigma_y`` is None.

    Returns:
        :math:`(K, K)` kernel summing to 1.
    """
    k = torch.exp(-0.5 * _mahalanobis_sq(kernel_size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float,
                                beta: float) -> torch.Tensor:
    """Generalized Gaussian :math:`\\propto \\exp(-\\tfrac12 (c^T \\Sigma^{-1} c)^\\beta)`: heavier tails for
    :math:`\\beta < 1`, flatter top for :math:`\\beta > 1`. Returns :math:`(K, K)`, summing to 1."""
    k = torch.exp(-0.5 * _mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta).pow(beta))
    return k / k.sum()


def plateau_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> torch.Tensor:
    """Plateau-shaped :math:`\\propto 1 / (1 + (c^T \\Sigma^{-1} c)^\\beta)`. Returns :math:`(K, K)`, summing to 1."""
    k = 1.0 / (1.0 + _mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta).pow(beta))
    return k / k.sum()


def sinc_kernel(kernel_size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass (2-D sinc) :math:`\\propto \\omega_c J_1(\\omega_c r) / (2 \\pi r)`, whose value at
    :math:`r = 0` is the limit :math:`\\omega_c^2 / (4 \\pi)`. It makes ringing and overshoot artefacts.

    Args:
        cutoff: the cut-off frequency :math:`\\omega_c` in radians per pixel, in :math:`(0, \\pi]`.

    Returns:
        :math:`(K, K)` kernel summing to 1.
    """
    _check_kernel_size(kernel_size)
    ax = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    r = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = torch.where(r == 0, torch.full_like(r, cutoff ** 2 / (4 * math.pi)),
                    cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r))
    return k / k.sum()


def _check_fits(image: torch.Tensor, kernel_size: int) -> None:
    """Reflect padding needs both sides longer than half the kernel."""
    if min(image.shape[1:3]) <= kernel_size // 2:
        k = kernel_size
        raise ValueError(f"the image ({image.shape[1]}x{image.shape[2]}) is too small for a {k}x{k} blur kernel: both "
                         f"sides must be at least {k // 2 + 1} pixels. Use a larger image or a smaller kernel.")


def filter_image(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filters every channel with ``kernel`` (reflect-padded borders, as Real-ESRGAN's ``filter2D``).

    Args:
        image: :math:`(B, H, W, C)`.
        kernel: :math:`(K, K)` shared by the batch, or :math:`(B, K, K)` one per image.

    Returns:
        :math:`(B, H, W, C)`.
    """
    _check_fits(image, kernel.shape[-1])
    kernel = kernel if kernel.ndim == 3 else kernel[None]
    return _bhwc(kornia.filters.filter2d(_bchw(image), kernel.to(image.dtype), border_type="reflect"))


def gaussian_blur(image: torch.Tensor, sigma: float, kernel_size: int = MAX_KERNEL_SIZE) -> torch.Tensor:
    """Isotropic Gaussian blur (kornia), reflect-padded. :math:`(B, H, W, C) \\to (B, H, W, C)`."""
    _check_kernel_size(kernel_size)
    _check_fits(image, kernel_size)
    return _bhwc(kornia.filters.gaussian_blur2d(_bchw(image), (kernel_size, kernel_size), (sigma, sigma),
                                                border_type="reflect"))


# ----------------------------------------------------------------------------------------------------------------
# Resizing, noise, JPEG, quantisation.


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """Resizes to ``size`` = (height, width) with ``torch.nn.functional.interpolate``.

    ``antialias=True`` with ``bicubic`` is the Keys kernel (a = -0.5) widened when shrinking, as PIL and MATLAB's
    ``imresize`` do: the bicubic downscale of SR benchmarks. :math:`(B, H, W, C) \\to (B, h, w, C)`.
    """
    if min(size) < 1:
        raise ValueError(f"cannot resize a {image.shape[1]}x{image.shape[2]} image to {size[0]}x{size[1]}: "
                         "the image is too small for this scale factor.")
    x = F.interpolate(_bchw(image), size=size, mode=mode, antialias=antialias and mode != "area")
    return _bhwc(x)


def bicubic_downscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Antialiased bicubic ÷``factor``; sizes are floored. :math:`(B, H, W, C) \\to (B, H // f, W // f, C)`."""
    return resize(image, (image.shape[1] // factor, image.shape[2] // factor), "bicubic", antialias=True)


def add_gaussian_noise(image: torch.Tensor, sigma: float, generator: torch.Generator,
                       gray: bool = False) -> torch.Tensor:
    """Adds :math:`\\mathcal{N}(0, (\\sigma/255)^2)` noise and clamps to [0, 1]; ``gray`` draws one noise map
    shared by the channels (luminance noise) instead of one per channel. :math:`(B, H, W, C)`."""
    b, h, w, c = image.shape
    noise = torch.randn((b, h, w, 1 if gray else c), generator=generator, dtype=image.dtype) * (sigma / 255.0)
    return (image + noise).clamp(0, 1)


def _poisson_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shot noise of ``x`` (:math:`(1, H, W, C)`) at Real-ESRGAN's photon scale: the count behind each value is
    ``x * n``, with ``n`` the number of distinct 8-bit levels in ``x`` rounded up to a power of two."""
    x = quantize(x)
    levels = 2.0 ** math.ceil(math.log2(torch.unique(x).numel()))
    return torch.poisson(x * levels, generator=generator) / levels - x


def add_poisson_noise(image: torch.Tensor, scale: float, generator: torch.Generator,
                      gray: bool = False) -> torch.Tensor:
    """Adds ``scale`` times Poisson (shot) noise and clamps to [0, 1]; ``gray`` computes it on the luminance
    (ITU-R BT.601 weights) and adds the same map to every channel. :math:`(B, H, W, 3)`."""
    check_image(image)
    out = []
    for img in image.split(1):
        source = _bhwc(kornia.color.rgb_to_grayscale(_bchw(img))) if gray else img
        out.append(img + scale * _poisson_noise(source, generator))
    return torch.cat(out).clamp(0, 1)


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Clamps to [0, 1] and rounds to the 8-bit grid, as saving a PNG does."""
    return (image.clamp(0, 1) * 255).round() / 255


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through Pillow (libjpeg, 4:2:0 chroma subsampling by default) at ``quality`` in 1..100.

    :math:`(B, H, W, 3) \\to (B, H, W, 3)`, on the 8-bit grid.
    """
    check_image(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100; got {quality}.")
    out = []
    for img in image:
        buffer = io.BytesIO()
        image_to_pil(img).save(buffer, format="JPEG", quality=int(quality))
        out.append(pil_to_image(Image.open(buffer)))
    return torch.stack(out).to(image.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Fixed presets: the classical model y = JPEG((x * k)↓s + n).


@dataclass(frozen=True)
class FixedDegradation:
    """Blur → bicubic downscale → Gaussian noise → JPEG, each step skipped when its value is None (scale 1).

    Attributes:
        blur_sigma: isotropic Gaussian blur σ in pixels (21×21 kernel).
        scale: antialiased bicubic downscale factor.
        noise_sigma: Gaussian noise σ on the 0-255 scale, independent per channel.
        jpeg_quality: Pillow JPEG quality.
    """
    blur_sigma: float | None = None
    scale: int = 1
    noise_sigma: float | None = None
    jpeg_quality: int | None = None

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """:math:`(B, H, W, 3) \\to (B, H // s, W // s, 3)` on the 8-bit grid."""
        x = image
        if self.blur_sigma is not None:
            x = gaussian_blur(x, self.blur_sigma)
        if self.scale != 1:
            x = bicubic_downscale(x, self.scale)
        if self.noise_sigma is not None:
            x = add_gaussian_noise(x, self.noise_sigma, generator)
        if self.jpeg_quality is not None:
            x = jpeg(x, self.jpeg_quality)
        return quantize(x)


# ----------------------------------------------------------------------------------------------------------------
# Real-ESRGAN's second-order pipeline.


@dataclass(frozen=True)
class KernelRanges:
    """Where the blur kernel of one stage is drawn from."""
    sigma: tuple[float, float]
    betag: tuple[float, float]
    betap: tuple[float, float]
    kind_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in KERNEL_KINDS order
    sinc_prob: float = 0.1


@dataclass(frozen=True)
class Stage:
    """One blur → resize → noise (→ JPEG) round. ``resize_probs`` are (up, down, keep)."""
    kernel: KernelRanges
    blur_prob: float
    resize_probs: tuple[float, float, float]
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_sigma: tuple[float, float]
    poisson_scale: tuple[float, float]
    gray_noise_prob: float
    jpeg_quality: tuple[float, float]


@dataclass(frozen=True)
class SecondOrderDegradation:
    """Two degradation stages, then resize to ``H // scale`` with a final sinc filter and JPEG in random order.

    The ground truth is not USM-sharpened first (Real-ESRGAN sharpens its training targets; a benchmark scores
    against the unsharpened image). JPEG qualities are drawn from the float range and rounded for Pillow.
    """
    source: str
    scale: int
    stage1: Stage
    stage2: Stage  # its jpeg_quality is the final JPEG's range
    final_sinc_prob: float

    @property
    def min_side(self) -> int:
        """Smallest input side for which every blur still fits: after the first resize and at the output size."""
        fit = MAX_KERNEL_SIZE // 2 + 1
        return max(math.ceil(fit / self.stage1.resize_range[0]), fit * self.scale)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """:math:`(B, H, W, 3) \\to (B, H // s, W // s, 3)` on the 8-bit grid; each image draws its own parameters."""
        check_image(image)
        if min(image.shape[1:3]) < self.min_side:
            raise ValueError(f"the second-order pipeline needs images of at least {self.min_side}x{self.min_side} "
                             f"pixels at scale {self.scale}; got {image.shape[1]}x{image.shape[2]}. Use a larger "
                             "image or a fixed preset.")
        return torch.cat([self._one(img, generator) for img in image.split(1)])

    def _one(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[1:3]
        out_size = (h // self.scale, w // self.scale)
        s1, s2 = self.stage1, self.stage2
        if _uniform(0, 1, g) < s1.blur_prob:
            x = filter_image(x, draw_kernel(s1.kernel, g).kernel())
        factor = _resize_factor(s1, g)
        x = _random_resize(x, (int(h * factor), int(w * factor)), g)
        x = jpeg(_random_noise(x, s1, g), round(_uniform(*s1.jpeg_quality, g)))
        if _uniform(0, 1, g) < s2.blur_prob:
            x = filter_image(x, draw_kernel(s2.kernel, g).kernel())
        factor = _resize_factor(s2, g)
        x = _random_resize(x, (int(h / self.scale * factor), int(w / self.scale * factor)), g)
        x = _random_noise(x, s2, g)
        sinc = draw_sinc(g, final=True).kernel() if _uniform(0, 1, g) < self.final_sinc_prob else None
        quality = round(_uniform(*s2.jpeg_quality, g))
        if _uniform(0, 1, g) < 0.5:  # [resize back + sinc] then JPEG, or the reverse, as Real-ESRGAN
            x = jpeg(self._resize_and_sinc(x, out_size, sinc, g), quality)
        else:
            x = self._resize_and_sinc(jpeg(x, quality), out_size, sinc, g)
        return quantize(x)

    @staticmethod
    def _resize_and_sinc(x: torch.Tensor, size: tuple[int, int], sinc: torch.Tensor | None,
                         g: torch.Generator) -> torch.Tensor:
        x = _random_resize(x, size, g)
        return x if sinc is None else filter_image(x, sinc)


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()


def _choice(probs: tuple[float, ...], g: torch.Generator) -> int:
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=g))


def _odd_size(g: torch.Generator) -> int:
    """An odd kernel size in 7..21, uniformly."""
    return 7 + 2 * int(torch.randint(0, 8, (), generator=g))


def _beta(lo_hi: tuple[float, float], g: torch.Generator) -> float:
    """Shape β: half the time below 1, half above (Real-ESRGAN's sampling of generalized/plateau kernels)."""
    lo, hi = lo_hi
    return _uniform(lo, 1, g) if _uniform(0, 1, g) < 0.5 else _uniform(1, hi, g)


@dataclass(frozen=True)
class KernelDraw:
    """The drawn parameters of one blur kernel; ``kind`` is one of ``KERNEL_KINDS`` or ``"sinc"``."""
    kind: str
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    cutoff: float = 0.0

    def kernel(self) -> torch.Tensor:
        """:math:`(K, K)`, summing to 1."""
        if self.kind == "sinc":
            return sinc_kernel(self.size, self.cutoff)
        if self.kind.startswith("generalized"):
            return generalized_gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)
        if self.kind.startswith("plateau"):
            return plateau_kernel(self.size, self.sigma_x, self.sigma_y, self.theta, self.beta)
        return gaussian_kernel(self.size, self.sigma_x, self.sigma_y, self.theta)


def draw_sinc(g: torch.Generator, final: bool = False) -> KernelDraw:
    """A sinc of odd size 7..21 and cut-off ω_c in [π/3, π], or [π/5, π] for stage kernels of size 13 and up."""
    size = _odd_size(g)
    low = math.pi / 3 if final or size < 13 else math.pi / 5
    return KernelDraw("sinc", size, cutoff=_uniform(low, math.pi, g))


def draw_kernel(ranges: KernelRanges, g: torch.Generator) -> KernelDraw:
    """One stage's blur: a sinc with probability ``sinc_prob``, else a kind of ``KERNEL_KINDS`` with σ_x, σ_y drawn
    from ``ranges.sigma`` (σ_y = σ_x and θ = 0 for isotropic kinds, θ in [-π, π] otherwise)."""
    if _uniform(0, 1, g) < ranges.sinc_prob:
        return draw_sinc(g)
    kind = KERNEL_KINDS[_choice(ranges.kind_probs, g)]
    size, sigma_x = _odd_size(g), _uniform(*ranges.sigma, g)
    if kind in ISOTROPIC_KINDS:
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = _uniform(*ranges.sigma, g), _uniform(-math.pi, math.pi, g)
    beta = (_beta(ranges.betag, g) if kind.startswith("generalized")
            else _beta(ranges.betap, g) if kind.startswith("plateau") else 1.0)
    return KernelDraw(kind, size, sigma_x, sigma_y, theta, beta)


def _resize_factor(stage: Stage, g: torch.Generator) -> float:
    direction = _choice(stage.resize_probs, g)
    lo, hi = stage.resize_range
    return (_uniform(1, hi, g), _uniform(lo, 1, g), 1.0)[direction]


def _random_resize(x: torch.Tensor, size: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """Resize with a mode drawn from area / bilinear / bicubic (not antialiased, as Real-ESRGAN)."""
    return resize(x, size, RESIZE_MODES[int(torch.randint(0, 3, (), generator=g))])


def _random_noise(x: torch.Tensor, stage: Stage, g: torch.Generator) -> torch.Tensor:
    gray = _uniform(0, 1, g) < stage.gray_noise_prob
    if _uniform(0, 1, g) < stage.gaussian_noise_prob:
        return add_gaussian_noise(x, _uniform(*stage.noise_sigma, g), g, gray)
    return add_poisson_noise(x, _uniform(*stage.poisson_scale, g), g, gray)


REAL_ESRGAN = SecondOrderDegradation(
    source="Real-ESRGAN x4plus",
    scale=4,
    stage1=Stage(KernelRanges(sigma=(0.2, 3.0), betag=(0.5, 4.0), betap=(1.0, 2.0)), blur_prob=1.0,
                 resize_probs=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5), gaussian_noise_prob=0.5,
                 noise_sigma=(1.0, 30.0), poisson_scale=(0.05, 3.0), gray_noise_prob=0.4, jpeg_quality=(30.0, 95.0)),
    stage2=Stage(KernelRanges(sigma=(0.2, 1.5), betag=(0.5, 4.0), betap=(1.0, 2.0)), blur_prob=0.8,
                 resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2), gaussian_noise_prob=0.5,
                 noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5), gray_noise_prob=0.4, jpeg_quality=(30.0, 95.0)),
    final_sinc_prob=0.8,
)

STABLESR = SecondOrderDegradation(
    source="StableSR/SeeSR (lighter ranges)",
    scale=4,
    stage1=Stage(KernelRanges(sigma=(0.2, 1.5), betag=(0.5, 2.0), betap=(1.0, 1.5)), blur_prob=1.0,
                 resize_probs=(0.2, 0.7, 0.1), resize_range=(0.3, 1.5), gaussian_noise_prob=0.5,
                 noise_sigma=(1.0, 15.0), poisson_scale=(0.05, 2.0), gray_noise_prob=0.4, jpeg_quality=(60.0, 95.0)),
    stage2=Stage(KernelRanges(sigma=(0.2, 1.0), betag=(0.5, 2.0), betap=(1.0, 1.5)), blur_prob=0.5,
                 resize_probs=(0.3, 0.4, 0.3), resize_range=(0.6, 1.2), gaussian_noise_prob=0.5,
                 noise_sigma=(1.0, 12.0), poisson_scale=(0.05, 1.0), gray_noise_prob=0.4, jpeg_quality=(60.0, 100.0)),
    final_sinc_prob=0.8,
)

BLUR_SIGMA, NOISE_SIGMA, JPEG_QUALITY = 2.0, 25.0, 30

DEGRADATION_PRESETS: dict[str, FixedDegradation | SecondOrderDegradation] = {
    "realesrgan_x4": REAL_ESRGAN,
    "stablesr_x4": STABLESR,
    "blur": FixedDegradation(blur_sigma=BLUR_SIGMA),
    "noise": FixedDegradation(noise_sigma=NOISE_SIGMA),
    "jpeg": FixedDegradation(jpeg_quality=JPEG_QUALITY),
    "sr_x2": FixedDegradation(scale=2),
    "sr_x4": FixedDegradation(scale=4),
    "blur_noise": FixedDegradation(blur_sigma=BLUR_SIGMA, noise_sigma=NOISE_SIGMA),
    "blur_sr_x4": FixedDegradation(blur_sigma=BLUR_SIGMA, scale=4),
    "blur_sr_x4_noise": FixedDegradation(blur_sigma=BLUR_SIGMA, scale=4, noise_sigma=NOISE_SIGMA),
}


def describe(preset: str) -> str:
    """A one-line description of a preset with its values, for tooltips and reports."""
    p = get_preset(preset)
    if isinstance(p, SecondOrderDegradation):
        return f"{preset}: {p.source} second-order random degradation, ÷{p.scale}"
    steps = [f"Gaussian blur σ={p.blur_sigma}" if p.blur_sigma is not None else None,
             f"bicubic ÷{p.scale}" if p.scale != 1 else None,
             f"Gaussian noise σ={p.noise_sigma}/255" if p.noise_sigma is not None else None,
             f"JPEG q={p.jpeg_quality}" if p.jpeg_quality is not None else None]
    return f"{preset}: " + " → ".join(s for s in steps if s)


def get_preset(name: str) -> FixedDegradation | SecondOrderDegradation:
    if name not in DEGRADATION_PRESETS:
        raise ValueError(f"unknown degradation preset {name!r}; choose one of: {', '.join(DEGRADATION_PRESETS)}.")
    return DEGRADATION_PRESETS[name]


def degrade(image: torch.Tensor, preset: str, seed: int = 0, resize_back: bool = False) -> torch.Tensor:
    """Degrades a batch with a preset; image ``i`` uses a generator seeded with ``seed + i``, so an image's LQ does
    not depend on the rest of the batch.

    Args:
        image: HQ IMAGE :math:`(B, H, W, 3)` in [0, 1].
        preset: a key of ``DEGRADATION_PRESETS``.
        seed: base seed.
        resize_back: bicubic-upsample the LQ to :math:`(H, W)` (the input size SUPIR and StableSR expect).

    Returns:
        LQ IMAGE :math:`(B, H // s, W // s, 3)`, or :math:`(B, H, W, 3)` with ``resize_back``, float32 on the CPU
        (where the seeded generators and Pillow's JPEG run).
    """
    check_image(image)
    pipeline = get_preset(preset)
    x = image.float().cpu()
    lq = torch.cat([pipeline(img, torch.Generator().manual_seed(seed + i)) for i, img in enumerate(x.split(1))])
    if resize_back and lq.shape[1:3] != image.shape[1:3]:
        lq = resize(lq, tuple(image.shape[1:3]), "bicubic").clamp(0, 1)
    return lq
