"""Restoration metrics: PSNR and SSIM with the SR-paper conventions, and learned metrics from local weight files.

Images are IMAGE tensors :math:`(B, H, W, 3)` in [0, 1]; every score is one value per image, :math:`(B,)` float64.

Conventions (as BasicSR and the MATLAB scripts SR papers report with):

* ``crop_border`` pixels are removed from every side first (the SR scale: 4 for ×4);
* ``y_channel`` scores the luma of ITU-R BT.601 YCbCr, :math:`Y = 16 + 65.481 R + 128.553 G + 24.966 B` on the
  0-255 scale (MATLAB's ``rgb2ycbcr``), unrounded; otherwise the three RGB channels;
* PSNR is :math:`10 \\log_{10}(L^2 / \\mathrm{MSE})` over all scored pixels, computed in float64;
* SSIM (Wang et al. 2004) uses an 11-tap Gaussian window of σ 1.5, :math:`K_1 = 0.01`, :math:`K_2 = 0.03`, the
  population (co)variances and only the window positions inside the image ('valid'); RGB SSIM is the mean of the
  three channels' SSIM.

Learned metrics never download anything: their weight files are read from ``<iqa_dir>/<metric>/`` (by default
``ComfyUI/models/iqa/<metric>/``), and a missing file is reported by name and folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from .degradation import check_image

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


# ----------------------------------------------------------------------------------------------------------------
# Learned metrics.


class MissingWeightsError(FileNotFoundError):
    """A learned metric's weight file is not in its folder (nothing is downloaded)."""


@dataclass(frozen=True)
class WeightFile:
    filename: str
    source: str  # where a user gets the file


@dataclass(frozen=True)
class LearnedMetricSpec:
    """A learned metric: its files in ``<iqa_dir>/<name>/`` and a builder from their paths (None: not implemented)."""
    name: str
    title: str
    files: tuple[WeightFile, ...]
    lower_is_better: bool
    build: Callable[..., Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None


class LPIPS(nn.Module):
    """LPIPS v0.1 on the AlexNet trunk (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
    Perceptual Metric", CVPR 2018).

    The images, mapped to [-1, 1] and normalised by LPIPS' fixed shift and scale, go through AlexNet's five
    conv+ReLU layers; each layer's activations are scaled to unit length along channels, the squared differences are
    weighted per channel by a learned non-negative 1×1 head, averaged over space and summed over the layers.
    """
    CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
    TORCHVISION_INDEX = (0, 3, 6, 8, 10)  # the convs' positions in torchvision's ``alexnet().features``
    POOL_BEFORE = (1, 2)  # 3×3 stride-2 max pools before conv2 and conv3
    MIN_SIDE = 31  # smallest input for which the second pool still has an output

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in self.CONVS)
        self.heads = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in self.CONVS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, alexnet_path: str, heads_path: str) -> "LPIPS":
        """Loads torchvision's ImageNet AlexNet state dict and the LPIPS v0.1 linear heads (``lin{k}.model.1``)."""
        model = cls()
        trunk = torch.load(alexnet_path, map_location="cpu", weights_only=True)
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        state = {}
        for k, idx in enumerate(cls.TORCHVISION_INDEX):
            for p in ("weight", "bias"):
                state[f"convs.{k}.{p}"] = _need(trunk, f"features.{idx}.{p}", alexnet_path, "torchvision AlexNet")
            state[f"heads.{k}.weight"] = _need(heads, f"lin{k}.model.1.weight", heads_path, "LPIPS v0.1 heads")
        model.load_state_dict(state | {"shift": model.shift, "scale": model.scale})
        return model.eval()

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1..relu5 activations of :math:`(B, 3, H, W)` in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for k, conv in enumerate(self.convs):
            if k in self.POOL_BEFORE:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` pair in [0, 1] -> distance :math:`(B,)`, 0 for identical images."""
        check_image(image, "image")
        if image.shape != reference.shape or min(image.shape[1:3]) < self.MIN_SIDE:
            raise ValueError(f"LPIPS compares images of the same size, at least {self.MIN_SIDE}x{self.MIN_SIDE}; got "
                             f"{tuple(image.shape)} and {tuple(reference.shape)}.")
        x, y = (t.movedim(-1, 1).to(self.shift) * 2 - 1 for t in (image, reference))
        total = 0
        for fx, fy, head in zip(self.layers(x), self.layers(y), self.heads):
            fx, fy = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (fx, fy))
            total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total.double()


def _need(state: dict, key: str, path: str, what: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{path} is not a {what} file: it has no tensor {key!r}.")
    return state[key]


LEARNED_METRICS: dict[str, LearnedMetricSpec] = {spec.name: spec for spec in (
    LearnedMetricSpec(
        "lpips", "LPIPS (AlexNet, v0.1)",
        (WeightFile("alexnet-owt-7be5be79.pth",
                    "torchvision's ImageNet AlexNet weights (download.pytorch.org/models/alexnet-owt-7be5be79.pth)"),
         WeightFile("alex.pth", "the LPIPS v0.1 linear heads, weights/v0.1/alex.pth in the 'lpips' pip package or "
                                "the richzhang/PerceptualSimilarity repository")),
        lower_is_better=True, build=LPIPS.from_files),
    LearnedMetricSpec(
        "dists", "DISTS",
        (WeightFile("vgg16-397923af.pth", "torchvision's ImageNet VGG16 weights"),
         WeightFile("weights.pt", "the DISTS alpha/beta weights from the dingkeyan93/DISTS repository")),
        lower_is_better=True),
    LearnedMetricSpec(
        "clipiqa", "CLIP-IQA",
        (WeightFile("RN50.pt", "OpenAI CLIP ResNet-50 weights"),),
        lower_is_better=False),
    LearnedMetricSpec(
        "musiq", "MUSIQ (KonIQ-10k)",
        (WeightFile("koniq_ckpt.npz", "the MUSIQ KonIQ-10k checkpoint from google-research/musiq"),),
        lower_is_better=False),
    LearnedMetricSpec(
        "maniqa", "MANIQA (KonIQ-10k)",
        (WeightFile("ckpt_koniq10k.pt", "the MANIQA KonIQ-10k checkpoint from IIGROUP/MANIQA"),),
        lower_is_better=False),
)}


def default_iqa_dir() -> str:
    """``ComfyUI/models/iqa``, resolved through ComfyUI's ``folder_paths`` (imported only here, when needed)."""
    try:
        import folder_paths
    except ImportError as e:
        raise ValueError("outside ComfyUI the folder of learned-metric weights must be given explicitly "
                         "(iqa_dir=..., or --iqa-dir on the command line), e.g. ComfyUI/models/iqa.") from e
    return os.path.join(folder_paths.models_dir, "iqa")


def load_learned_metric(name: str, iqa_dir: str | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Builds a learned metric from ``<iqa_dir>/<name>/``; the result maps (image, reference) IMAGE pairs to
    :math:`(B,)` scores.

    Raises:
        ValueError: unknown metric.
        NotImplementedError: a metric this version lists but does not compute yet.
        MissingWeightsError: a weight file is missing; the message names the file, its folder and its source.
    """
    if name not in LEARNED_METRICS:
        raise ValueError(f"unknown learned metric {name!r}; choose one of: {', '.join(LEARNED_METRICS)}.")
    spec = LEARNED_METRICS[name]
    folder = os.path.join(iqa_dir or default_iqa_dir(), name)
    if spec.build is None:
        needs = ", ".join(f.filename for f in spec.files)
        raise NotImplementedError(f"{spec.title} is not implemented in this version of the pack (it would read {needs} "
                                  f"from {folder}); implemented learned metrics: "
                                  f"{', '.join(n for n, s in LEARNED_METRICS.items() if s.build)}.")
    paths = []
    for f in spec.files:
        path = os.path.join(folder, f.filename)
        if not os.path.isfile(path):
            raise MissingWeightsError(f"{spec.title} needs the weight file {f.filename} in {folder} (missing: {path}). "
                                      f"It is {f.source}. Put it there; this pack never downloads weights.")
        paths.append(path)
    return spec.build(*paths)
