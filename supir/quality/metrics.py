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

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..weights import check_layout, read_state_dict
from .degradation import check_image, image_to_pil

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


Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MissingWeightsError(FileNotFoundError):
    """A learned metric's weight file is not in its folder (nothing is downloaded)."""


@dataclass(frozen=True)
class WeightFile:
    filename: str
    source: str  # where a user gets the file
    alternatives: tuple[str, ...] = ()  # other names accepted for the same file, tried after ``filename``

    def find(self, folder: str) -> str | None:
        """The path of the first of ``filename`` and ``alternatives`` present in ``folder``, or None."""
        for name in (self.filename, *self.alternatives):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        return None


@dataclass(frozen=True)
class LearnedMetricSpec:
    """A learned metric: its files in ``<iqa_dir>/<name>/`` and a builder from their paths.

    A no-reference metric scores the image alone; its metric function ignores the reference.
    """
    name: str
    title: str
    files: tuple[WeightFile, ...]
    lower_is_better: bool
    build: Callable[..., Metric]
    no_reference: bool = False


def _need(state: dict, key: str, path: str, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``; a ValueError naming the file when it is missing or (if ``shape`` is given) of another shape."""
    if key not in state:
        raise ValueError(f"{path} is not a {what} file: it has no tensor {key!r}.")
    if shape is not None and tuple(state[key].shape) != shape:
        raise ValueError(f"{path} is not a {what} file: {key!r} has shape {tuple(state[key].shape)}, expected "
                         f"{shape}.")
    return state[key]


def _pair_bchw(image: torch.Tensor, reference: torch.Tensor, what: str, min_side: int,
               like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks an IMAGE pair of one shape and returns both as :math:`(B, 3, H, W)` in ``like``'s dtype and device."""
    check_image(image, "image")
    check_image(reference, "reference")
    if image.shape != reference.shape or min(image.shape[1:3]) < min_side:
        raise ValueError(f"{what} compares images of the same size, at least {min_side}x{min_side}; got "
                         f"{tuple(image.shape)} and {tuple(reference.shape)}.")
    return tuple(t.movedim(-1, 1).to(like) for t in (image, reference))


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
        trunk, heads = read_state_dict(alexnet_path), read_state_dict(heads_path)
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
        x, y = (t * 2 - 1 for t in _pair_bchw(image, reference, "LPIPS", self.MIN_SIDE, self.shift))
        total = 0
        for fx, fy, head in zip(self.layers(x), self.layers(y), self.heads):
            fx, fy = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (fx, fy))
            total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total.double()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DISTS(nn.Module):
    """DISTS (Ding, Ma, Wang and Simoncelli, "Image Quality Assessment: Unifying Structure and Texture Similarity",
    TPAMI 2020), as the authors' PyTorch release computes it.

    Six representations of each image: the image itself (RGB in [0, 1]) and the last ReLU of each of VGG16's five
    conv stages on the ImageNet-normalised image, where each 2×2 max pool between stages is replaced by L2 pooling:
    the square root of a 3×3 Hann-window blur (the inner taps of ``hanning(5)``, i.e. (1 2 1)ᵀ(1 2 1) / 16) of the
    squared activations, stride 2, padding 1. For every channel of every representation, with the spatial means
    μ, variances σ² and covariance σxy of the two images,

    texture  :math:`l = (2 μ_x μ_y + c_1) / (μ_x^2 + μ_y^2 + c_1)`,
    structure :math:`s = (2 σ_{xy} + c_2) / (σ_x^2 + σ_y^2 + c_2)`, :math:`c_1 = c_2 = 10^{-6}`,

    and :math:`D = 1 - \\sum (α l + β s) / \\sum (α + β)` over the 1475 channels (3 + 64 + 128 + 256 + 512 + 512)
    with the released α, β. 0 for identical images; larger is worse; symmetric in its two arguments. Images are
    scored at their own size (the authors' demo script first shrinks images whose short side exceeds 256 px to 256).
    """
    STAGE_CONVS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # conv output channels
    CHANNELS = (3, 64, 128, 256, 512, 512)  # the image, then each stage
    C1 = C2 = 1e-6

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList()
        c_in = 3
        for convs in self.STAGE_CONVS:
            self.stages.append(nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip((c_in, *convs), convs)))
            c_in = convs[-1]
        taps = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        window = taps[:, None] * taps[None, :]
        self.register_buffer("pool_window", (window / window.sum()).float().view(1, 1, 3, 3))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("alpha", torch.ones(sum(self.CHANNELS)))
        self.register_buffer("beta", torch.ones(sum(self.CHANNELS)))

    @classmethod
    def torchvision_indices(cls) -> list[list[int]]:
        """Each stage's conv positions in torchvision's ``vgg16().features``: conv/ReLU pairs, a max pool after each
        stage, i.e. [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]."""
        out, index = [], 0
        for convs in cls.STAGE_CONVS:
            out.append(list(range(index, index + 2 * len(convs), 2)))
            index += 2 * len(convs) + 1
        return out

    @classmethod
    def from_files(cls, vgg_path: str, weights_path: str) -> "DISTS":
        """Loads torchvision's ImageNet VGG16 state dict (``features.N.weight/bias``; the classifier is ignored) and
        the DISTS release's ``{"alpha", "beta"}``, each :math:`(1, 1475, 1, 1)`."""
        model = cls()
        vgg, weights = read_state_dict(vgg_path), read_state_dict(weights_path)
        state = model.state_dict()
        for s, indices in enumerate(cls.torchvision_indices()):
            for k, idx in enumerate(indices):
                conv = model.stages[s][k]
                for p in ("weight", "bias"):
                    state[f"stages.{s}.{k}.{p}"] = _need(vgg, f"features.{idx}.{p}", vgg_path, "torchvision VGG16",
                                                         tuple(getattr(conv, p).shape))
        n = sum(cls.CHANNELS)
        for name in ("alpha", "beta"):
            state[name] = _need(weights, name, weights_path, "DISTS alpha/beta", (1, n, 1, 1)).detach().reshape(n)
        if (state["alpha"].sum() + state["beta"].sum()).item() == 0:
            raise ValueError(f"{weights_path}: alpha and beta sum to 0, so DISTS is undefined; use the released "
                             "weights.pt.")
        model.load_state_dict(state)
        return model.eval()

    def l2_pool(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, C, H, W) \\to (B, C, \\lceil H/2 \\rceil, \\lceil W/2 \\rceil)`."""
        window = self.pool_window.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return (F.conv2d(x * x, window, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image :math:`(B, 3, H, W)` in [0, 1] and its five stage outputs (relu1_2, relu2_2, relu3_3, relu4_3,
        relu5_3)."""
        out = [x]
        h = (x - self.mean) / self.std
        for s, stage in enumerate(self.stages):
            if s:
                h = self.l2_pool(h)
            for conv in stage:
                h = F.relu(conv(h))
            out.append(h)
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` pair in [0, 1] -> distance :math:`(B,)` float64, 0 for identical images.

        The statistics are taken in float64 (the features in float32), so identical images give 0 to ~1e-12.
        """
        x, y = _pair_bchw(image, reference, "DISTS", 1, self.mean)
        alphas = self.alpha.double().split(self.CHANNELS)
        betas = self.beta.double().split(self.CHANNELS)
        similarity = 0
        for fx, fy, alpha, beta in zip(self.representations(x), self.representations(y), alphas, betas):
            fx, fy = fx.double(), fy.double()
            mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
            vx = (fx - mx[..., None, None]).pow(2).mean(dim=(2, 3))
            vy = (fy - my[..., None, None]).pow(2).mean(dim=(2, 3))
            cov = (fx * fy).mean(dim=(2, 3)) - mx * my
            texture = (2 * mx * my + self.C1) / (mx ** 2 + my ** 2 + self.C1)
            structure = (2 * cov + self.C2) / (vx + vy + self.C2)
            similarity = similarity + (texture * alpha + structure * beta).sum(dim=1)
        return (1 - similarity / (self.alpha.double().sum() + self.beta.double().sum())).cpu()


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class CLIPPreprocess:
    """CLIP's image preprocessing as a ``preprocessor_config.json`` describes it, done as transformers'
    ``CLIPImageProcessor`` does on 8-bit images: the image is rounded to 8 bits, its short side resized with Pillow
    (bicubic unless the config names another filter) to ``shortest_edge`` and the long side to
    ``int(shortest_edge · long / short)`` (or both sides to a fixed ``size``), centre-cropped (offsets rounded down)
    and normalised per channel."""
    shortest_edge: int | None
    size: tuple[int, int] | None  # (height, width) when the config fixes both
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_config(cls, path: str) -> "CLIPPreprocess":
        """Reads both the current (``{"shortest_edge": 224}``, ``{"height": 224, "width": 224}``) and the old
        (plain integers) forms of ``size`` and ``crop_size``."""
        try:
            with open(path) as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable preprocessor_config.json ({e}).") from e
        shortest_edge = size = crop = None
        if config.get("do_resize", True):
            raw = config.get("size", 224)
            if isinstance(raw, int):
                shortest_edge = raw
            elif isinstance(raw, dict) and "shortest_edge" in raw:
                shortest_edge = int(raw["shortest_edge"])
            elif isinstance(raw, dict) and {"height", "width"} <= set(raw):
                size = (int(raw["height"]), int(raw["width"]))
            else:
                raise ValueError(f"{path}: unsupported 'size' {raw!r}; expected an integer, {{'shortest_edge': n}} or "
                                 "{'height': h, 'width': w}.")
        if config.get("do_center_crop", True):
            raw = config.get("crop_size", 224)
            crop = (raw, raw) if isinstance(raw, int) else (int(raw["height"]), int(raw["width"]))
        normalise = config.get("do_normalize", True)
        mean = tuple(config.get("image_mean", OPENAI_CLIP_MEAN)) if normalise else (0.0, 0.0, 0.0)
        std = tuple(config.get("image_std", OPENAI_CLIP_STD)) if normalise else (1.0, 1.0, 1.0)
        return cls(shortest_edge, size, crop, mean, std, int(config.get("resample", Image.Resampling.BICUBIC)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the resize gives, before cropping."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        short, long = min(height, width), max(height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)

    def one(self, image: torch.Tensor) -> torch.Tensor:
        """:math:`(H, W, 3)` in [0, 1] -> :math:`(3, h, w)` float32."""
        pil = image_to_pil(image)
        size = self.output_size(pil.height, pil.width)
        if size != (pil.height, pil.width):
            pil = pil.resize((size[1], size[0]), Image.Resampling(self.resample))
        x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).movedim(-1, 0)
        if self.crop is not None:
            (h, w), (ch, cw) = x.shape[1:], self.crop
            if ch > h or cw > w:
                raise ValueError(f"CLIP-IQA: the resized {h}x{w} image is smaller than the {ch}x{cw} crop of the "
                                 "preprocessor config; use the folder's own preprocessor_config.json.")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, top:top + ch, left:left + cw]
        return (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> pixel values :math:`(B, 3, h, w)` float32 on the CPU."""
        check_image(image)
        return torch.stack([self.one(img) for img in image.cpu()])


class CLIPIQA(nn.Module):
    """CLIP-IQA (Wang, Chan and Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI 2023), the
    zero-shot quality score: with the cosine similarities :math:`c_+, c_-` of the image embedding to the embeddings
    of the antonym prompts "Good photo." and "Bad photo.", the score is the softmax probability of the first,
    :math:`e^{100 c_+} / (e^{100 c_+} + e^{100 c_-})` in (0, 1); higher is better. It needs no reference.

    The backbone is a transformers ``CLIPModel`` folder: the OpenAI ViT models (ViT-B/32, ViT-B/16, ViT-L/14) or any
    other CLIP in transformers' format. The paper's ResNet-50 CLIP has no transformers port, so it is not supported;
    a ViT gives different numbers from the paper's (which feeds RN50 the full-size image without positional
    embedding), while the ViT sees the image preprocessed as its ``preprocessor_config.json`` says (short side
    resized to 224, centre crop). The factor 100 is CLIP's trained logit scale (OpenAI clamps it at 100).
    """
    PROMPTS = ("Good photo.", "Bad photo.")
    LOGIT_SCALE = 100.0

    def __init__(self, clip_model: nn.Module, text_embeds: torch.Tensor, preprocess: CLIPPreprocess):
        super().__init__()
        self.clip = clip_model
        self.register_buffer("text_embeds", text_embeds)  # (2, D), unit length
        self.preprocess = preprocess

    @classmethod
    def from_files(cls, config_path: str, _weights_path: str, preprocessor_path: str,
                   *_tokenizer_paths: str) -> "CLIPIQA":
        """Loads the ``CLIPModel``, its tokenizer and its preprocessing from the folder of these files (transformers
        finds the weights and tokenizer files there itself; local files only)."""
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError as e:
            raise ImportError("CLIP-IQA needs the 'transformers' package (ComfyUI installs it): "
                              "pip install transformers.") from e
        folder = os.path.dirname(config_path)
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
        if model_type != "clip":
            raise ValueError(f"{config_path}: CLIP-IQA needs a transformers CLIPModel folder (model_type 'clip'); this "
                             f"one is {model_type!r}. Use e.g. openai/clip-vit-base-patch32; the RN50 CLIP of the "
                             "paper has no transformers port.")
        model = CLIPModel.from_pretrained(folder, local_files_only=True, weights_only=True).eval()
        preprocess = CLIPPreprocess.from_config(preprocessor_path)
        image_size = model.config.vision_config.image_size
        if preprocess.crop != (image_size, image_size):
            raise ValueError(f"{preprocessor_path}: crop {preprocess.crop} does not give the {image_size}x{image_size} "
                             "input this CLIP's vision tower takes; use the folder's own preprocessor_config.json.")
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        tokens = tokenizer(list(cls.PROMPTS), padding=True, return_tensors="pt")
        with torch.no_grad():
            text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text_embeds = F.normalize(model.text_projection(text.pooler_output), dim=-1)
        return cls(model, text_embeds, preprocess)

    @torch.no_grad()
    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels :math:`(B, 3, S, S)` -> unit-length image embeddings :math:`(B, D)`."""
        vision = self.clip.vision_model(pixel_values=pixel_values.to(self.text_embeds))
        return F.normalize(self.clip.visual_projection(vision.pooler_output), dim=-1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> probability of "Good photo." :math:`(B,)` float64; the reference
        is ignored (no-reference metric)."""
        cosine = self.image_embeds(self.preprocess(image)) @ self.text_embeds.T
        return (self.LOGIT_SCALE * cosine.double()).softmax(dim=-1)[:, 0].cpu()


# ----------------------------------------------------------------------------------------------------------------
# Building blocks shared by MUSIQ and MANIQA. Attribute names follow the released checkpoints' key names.


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt``/``.pth`` state dict as float32 (integer buffers kept), DataParallel's ``module.``
    prefixes removed."""
    state = read_state_dict(path)
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}


def _count(state: dict, pattern: str) -> int:
    """How many keys of ``state`` match the regular expression ``pattern`` in full."""
    return sum(1 for k in state if re.fullmatch(pattern, k))


def _load_layout(model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str,
                 ignored: Callable[[str], bool] = lambda key: False) -> None:
    """Loads ``state`` into ``model`` (built on the meta device) by assignment after checking that its tensors are
    exactly the model's, by name and shape; keys for which ``ignored`` is true may be present and are skipped."""
    expected = model.state_dict()
    check_layout({k: v.shape for k, v in expected.items()},
                 {k: v.shape for k, v in state.items() if k in expected or not ignored(k)}, f"{what} network", path)
    model.load_state_dict({k: state[k] for k in expected}, assign=True)


def _divisible(value: int, by: int, path: str, what: str, name: str) -> None:
    """A ValueError naming the file unless ``value`` (its ``name``, derived from a shape) is a multiple of ``by``."""
    if value % by:
        raise ValueError(f"{path} is not a {what} file: its {name} {value} is not a multiple of {by}.")


class _Mlp(nn.Module):
    """``fc1`` → exact GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on :math:`(..., N, C)` projections -> :math:`(..., N, C)`; ``bias`` is
    added to the logits and broadcasts to :math:`(..., heads, N, N)`."""
    split = [t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(-3, -2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split, attn_mask=bias).transpose(-3, -2).flatten(-2)


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero padding as TensorFlow's ``SAME``: the output of a ``kernel``/``stride`` window has
    :math:`\\lceil n / stride \\rceil` positions; an odd padding puts the extra pixel after (bottom, right)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


# ----------------------------------------------------------------------------------------------------------------
# MUSIQ.


class _StdConv(nn.Conv2d):
    """Weight-standardised convolution (BiT) with TensorFlow ``SAME`` padding, no bias.

    Each output filter is standardised by its mean and unbiased standard deviation (+1e-5), as pyiqa's port does;
    the JAX original divides by the population standard deviation. A GroupNorm follows every such convolution, so
    the two differ only through the small ε's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(tf_same_pad(x, self.kernel_size[0], self.stride[0]), w, stride=self.stride)


class _MusiqBottleneck(nn.Module):
    """The ResNet bottleneck unit of MUSIQ's patch stem: 1×1, 3×3, 1×1 standardised convs with GroupNorm (32 groups,
    ε 1e-4) and a projected shortcut."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.conv1, self.gn1 = _StdConv(width, width, 1, bias=False), nn.GroupNorm(32, width, eps=1e-4)
        self.conv2, self.gn2 = _StdConv(width, width, 3, bias=False), nn.GroupNorm(32, width, eps=1e-4)
        self.conv3, self.gn3 = _StdConv(width, out, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj, self.gn_proj = _StdConv(width, out, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + shortcut)


class _MusiqAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(_attention(self.query(x), self.key(x), self.value(x), self.heads))


class _MusiqBlock(nn.Module):
    """Pre-norm Transformer encoder block (LayerNorm ε 1e-6)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _MusiqAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _MusiqEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, layers: int, grid: int, scales: int, heads: int):
        super().__init__()
        self.posembed_input = nn.Module()
        self.posembed_input.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.scaleembed_input = nn.Module()
        self.scaleembed_input.scale_emb = nn.Parameter(torch.zeros(scales, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _MusiqBlock(dim, mlp_dim, heads)
                                          for i in range(layers)})
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedded patches :math:`(B, N, D)` -> the normalised class token :math:`(B, D)`."""
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x[:, 0])


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """MUSIQ's hash-based 2-D positions of a ``count_h`` × ``count_w`` patch grid, row by row: patch (i, j) gets
    embedding ``t_i · grid + t_j`` of the ``grid`` × ``grid`` table, where ``t`` maps the patch rows (columns) onto
    the grid by nearest-neighbour resizing without half-pixel centres, :math:`t_i = \\lfloor i \\cdot grid / count
    \\rfloor` (TF1's resize and torch's ``nearest``). :math:`\\to (count_h \\cdot count_w,)` int64."""
    def onto_grid(count: int) -> torch.Tensor:
        table = torch.arange(grid, dtype=torch.float32).view(1, 1, grid)
        return F.interpolate(table, size=count, mode="nearest").view(count).long()
    return (onto_grid(count_h)[:, None] * grid + onto_grid(count_w)[None, :]).flatten()


class MUSIQ(nn.Module):
    """MUSIQ (Ke, Wang, Wang, Milanfar and Yang, "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021), the
    KonIQ-10k model as pyiqa's PyTorch port of the official checkpoint computes it. No reference; higher is better;
    KonIQ-10k's MOS scale (about 0-100; the raw regression output, not clamped).

    The image, mapped to [-1, 1], is seen at three scales: resized (bicubic, aspect ratio kept, sides rounded) so the
    longer side is 224, then 384, and at its own resolution. Each scale is zero-padded as TensorFlow's ``SAME`` to a
    multiple of 32 and cut into 32×32 patches; each patch goes through a small ResNet stem (7×7/2 standardised conv,
    GroupNorm, ReLU, 3×3/2 max pool, one bottleneck unit: 256 × 8 × 8 features, flattened in TensorFlow's H, W, C
    order) and a linear embedding. A patch's hash position (:func:`hashed_positions`, a 10×10 grid) and its scale
    select the learned embeddings added to it. A class token and all patches of all scales go through a 14-layer
    Transformer encoder (width 384, 6 heads, MLP 1152); a linear head on the class token gives the score.

    The official preprocessing pads each resized scale to a fixed length with masked tokens, which no real token
    attends to; they are left out here, which gives the same class token. pyiqa's port (whose file is read) differs
    from Google's JAX code, which resizes with TensorFlow's Gaussian kernel and uses the tanh approximation of GELU:
    pyiqa reports scores within about 3 % of the official ones; this class follows the port.
    """
    HEADS = 6
    STEM_WIDTH = 64
    LONGER_SIDES = (224, 384)
    STEM_CHUNK = 1024  # patches per pass through the stem, bounding memory on large images
    WHAT = "pyiqa MUSIQ (KonIQ-10k)"

    def __init__(self, hidden: int = 384, mlp_dim: int = 1152, layers: int = 14, grid: int = 10, patch: int = 32):
        super().__init__()
        self.patch = patch
        self.conv_root = _StdConv(3, self.STEM_WIDTH, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, self.STEM_WIDTH, eps=1e-6)
        self.block1 = _MusiqBottleneck(self.STEM_WIDTH, 4 * self.STEM_WIDTH)
        self.embedding = nn.Linear(4 * self.STEM_WIDTH * math.ceil(patch / 4) ** 2, hidden)
        self.transformer_encoder = _MusiqEncoder(hidden, mlp_dim, layers, grid, len(self.LONGER_SIDES) + 1,
                                                 self.HEADS)
        self.head = nn.Linear(hidden, 1)

    @classmethod
    def from_file(cls, path: str) -> "MUSIQ":
        """Reads pyiqa's ``musiq_koniq_ckpt-e95806b9.pth``."""
        return cls.from_state_dict(_state_dict(path), path)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], path: str) -> "MUSIQ":
        """Builds the model from a checkpoint's tensors (``path`` names it in errors): width, MLP size, depth, hash
        grid and patch size come from the tensor shapes, and every tensor is checked by name and shape. The tensors
        are used as they are (meta tensors give a model on the meta device)."""
        what = cls.WHAT
        hidden, stem_out = _need(state, "embedding.weight", path, what).shape
        _divisible(hidden, cls.HEADS, path, what, "width")
        token_side = math.isqrt(stem_out // (4 * cls.STEM_WIDTH))
        grid = math.isqrt(_need(state, "transformer_encoder.posembed_input.position_emb", path, what).shape[1])
        mlp_dim = _need(state, "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight", path, what).shape[0]
        layers = _count(state, r"transformer_encoder\.transformer\.encoderblock_\d+\.norm1\.weight")
        with torch.device("meta"):
            model = cls(hidden, mlp_dim, layers, grid, 4 * token_side)
        _load_layout(model, state, path, what)
        return model.eval()

    def patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """The stem: :math:`(N, 3, P, P) \\to (N, P/4 \\cdot P/4 \\cdot 256)`, flattened in H, W, C order."""
        out = []
        for chunk in patches.split(self.STEM_CHUNK):
            x = F.relu(self.gn_root(self.conv_root(chunk)))
            x = self.block1(F.max_pool2d(tf_same_pad(x, 3, 2), 3, 2))
            out.append(x.permute(0, 2, 3, 1).flatten(1))
        return torch.cat(out)

    def scale_tokens(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """One scale :math:`(B, 3, H, W)` in [-1, 1] -> its embedded patches with position and scale embeddings
        :math:`(B, \\lceil H/P \\rceil \\lceil W/P \\rceil, D)`, row by row."""
        b, p = x.shape[0], self.patch
        x = tf_same_pad(x, p, p)
        count_h, count_w = x.shape[2] // p, x.shape[3] // p
        patches = x.view(b, 3, count_h, p, count_w, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, p, p)
        tokens = self.embedding(self.patch_features(patches).view(b, count_h * count_w, -1))
        encoder = self.transformer_encoder
        grid = math.isqrt(encoder.posembed_input.position_emb.shape[1])
        tokens = tokens + encoder.posembed_input.position_emb[0, hashed_positions(grid, count_h, count_w)]
        return tokens + encoder.scaleembed_input.scale_emb[scale]

    def scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The resized views (longer side 224, 384) and the image itself, :math:`(B, 3, h_s, w_s)`."""
        h, w = x.shape[-2:]
        views = []
        for side in self.LONGER_SIDES:
            ratio = side / max(h, w)
            size = (round(h * ratio), round(w * ratio))
            if min(size) < 1:
                raise ValueError(f"MUSIQ: a {h}x{w} image is too thin to resize to a longer side of {side}.")
            views.append(F.interpolate(x, size=size, mode="bicubic", align_corners=False))
        return views + [x]

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> score :math:`(B,)` float64; the reference is ignored."""
        check_image(image)
        x = image.movedim(-1, 1).to(self.head.weight) * 2 - 1
        tokens = torch.cat([self.scale_tokens(view, s) for s, view in enumerate(self.scales(x))], dim=1)
        return self.head(self.transformer_encoder(tokens))[:, 0].double().cpu()


# ----------------------------------------------------------------------------------------------------------------
# MANIQA.


class _QKVAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output ``proj`` (timm's layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`(..., N, C) \\to (..., N, C)`; ``bias`` is added to the attention logits."""
        return self.proj(_attention(*self.qkv(x).chunk(3, dim=-1), self.heads, bias))


class _ViTBlock(nn.Module):
    """timm's pre-norm ViT block (LayerNorm ε 1e-6)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _QKVAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TransposedAttention(nn.Module):
    """MANIQA's transposed attention block: attention between the C channels, each a vector over the N tokens,
    with the scale :math:`N^{-1/2}`, plus the input. :math:`(B, C, N) \\to (B, C, N)`."""

    def __init__(self, tokens: int):
        super().__init__()
        self.c_q, self.c_k, self.c_v = (nn.Linear(tokens, tokens) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        out = F.scaled_dot_product_attention(self.c_q(x), self.c_k(x), self.c_v(x))
        # The released code turns the (B, C, N) result into (B, N, C) and reads that memory back as (B, C, N) — a
        # reshape, not a transpose, which mixes channels and tokens. The weights were trained with it.
        return out.transpose(1, 2).reshape(b, c, n) + x


class _WindowAttention(_QKVAttention):
    """Swin window attention: a learned bias per head for each relative offset within the window."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__(dim, heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.zeros(window ** 2, window ** 2, dtype=torch.long))

    def position_bias(self) -> torch.Tensor:
        """:math:`(heads, w^2, w^2)`."""
        n = self.relative_position_index.shape[0]
        return self.relative_position_bias_table[self.relative_position_index.flatten()].view(n, n, -1).permute(2, 0, 1)


class _SwinBlock(nn.Module):
    """Swin block on a :math:`(B, H, W, C)` map: LayerNorm, attention in ``window`` × ``window`` windows (cyclically
    shifted by ``shift`` first, with the released ``attn_mask`` keeping wrapped-around regions apart), LayerNorm,
    MLP; both with residuals. The relative-position index and the mask are read from the checkpoint."""

    def __init__(self, dim: int, mlp_dim: int, heads: int, window: int, shift: int, grid: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, mlp_dim)
        if shift:
            self.register_buffer("attn_mask", torch.zeros((grid // window) ** 2, window ** 2, window ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        k, s = self.window, self.shift
        y = torch.roll(self.norm1(x), (-s, -s), (1, 2)) if s else self.norm1(x)
        windows = y.view(b, h // k, k, w // k, k, c).transpose(2, 3).reshape(b, -1, k * k, c)
        bias = self.attn.position_bias()
        if s:
            bias = bias + self.attn_mask[:, None]  # (windows, heads, k², k²)
        y = self.attn(windows, bias).view(b, h // k, w // k, k, k, c).transpose(2, 3).reshape(b, h, w, c)
        x = x + (torch.roll(y, (s, s), (1, 2)) if s else y)
        return x + self.mlp(self.norm2(x))


class _SwinStage(nn.Module):
    """Swin blocks (every second one shifted by half a window), then a 3×3 conv and ReLU."""

    def __init__(self, dim: int, depth: int, mlp_dim: int, heads: int, window: int, grid: int):
        super().__init__()
        self.blocks = nn.ModuleList(_SwinBlock(dim, mlp_dim, heads, window, window // 2 if i % 2 else 0, grid)
                                    for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, H, W, C) \\to (B, H, W, C)`."""
        for block in self.blocks:
            x = block(x)
        return F.relu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class _ScaleSwin(nn.Module):
    """MANIQA's scale Swin Transformer block: each stage's output is added to its input scaled by ``scale``."""

    def __init__(self, dim: int, depths: tuple[int, ...], mlp_dim: int, heads: int, window: int, grid: int,
                 scale: float):
        super().__init__()
        self.scale = scale
        self.layers = nn.ModuleList(_SwinStage(dim, d, mlp_dim, heads, window, grid) for d in depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, C, H, W) \\to (B, C, H, W)`."""
        x = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.permute(0, 3, 1, 2)


class MANIQA(nn.Module):
    """MANIQA (Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment",
    CVPR Workshops 2022), the authors' KonIQ-10k model. No reference; higher is better; about 0-1.

    A 224×224 crop, normalised to [-1, 1], goes through timm's ViT-B/8; the patch tokens (28 × 28) of blocks 7-10
    (indices 6-9) are concatenated (3072 channels). Two transposed attention blocks, a 1×1 conv to 768 channels and a
    scale Swin Transformer block (two stages of two Swin blocks, 4 heads, 4×4 windows, MLP 768, a 3×3 conv, stage
    residuals scaled by 0.8), then again two transposed attention blocks, a 1×1 conv to 384 channels and a second
    scale Swin block. Per patch, a score branch (Linear, ReLU, Linear, ReLU) and a weight branch (Linear, ReLU,
    Linear, sigmoid) give :math:`s_i, w_i`; the crop scores :math:`\\sum w_i s_i / \\sum w_i`.

    The image score is the mean over ``num_crops`` random 224×224 crops, as the authors' ``predict_one_image.py``
    (20 crops). Their positions are drawn from a generator seeded with ``seed`` for each image size, so a score is
    reproducible and every image of a batch gets the same crops. An image with a side under 224 px is first resized
    (bilinear) so its shorter side is 224. pyiqa instead pools the patches of 20 crops on a fixed grid into one
    weighted mean, so its scores differ slightly.
    """
    VIT_HEADS = 12
    FEATURE_BLOCKS = (6, 7, 8, 9)
    SWIN_SCALE = 0.8  # the KonIQ-10k (and KADID-10k) models' setting; the PIPAL one was trained with 0.13

    def __init__(self, vit_dim: int = 768, vit_mlp: int = 3072, patch: int = 8, grid: int = 28, embed_dim: int = 768,
                 num_tab: int = 2, depths: tuple[int, ...] = (2, 2), swin_heads: int = 4, window: int = 4,
                 swin_mlp: int = 768, num_crops: int = 20, seed: int = 0):
        super().__init__()
        if num_crops < 1:
            raise ValueError(f"MANIQA needs at least one crop; got num_crops={num_crops}.")
        self.crop, self.num_crops, self.seed = grid * patch, num_crops, seed
        self.vit = nn.Module()
        self.vit.cls_token = nn.Parameter(torch.zeros(1, 1, vit_dim))
        self.vit.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, vit_dim))
        self.vit.patch_embed = nn.Module()
        self.vit.patch_embed.proj = nn.Conv2d(3, vit_dim, patch, patch)
        self.vit.blocks = nn.ModuleList(_ViTBlock(vit_dim, vit_mlp, self.VIT_HEADS)
                                        for _ in range(max(self.FEATURE_BLOCKS) + 1))
        swin = dict(depths=depths, mlp_dim=swin_mlp, heads=swin_heads, window=window, grid=grid,
                    scale=self.SWIN_SCALE)
        self.tablock1 = nn.ModuleList(_TransposedAttention(grid * grid) for _ in range(num_tab))
        self.conv1 = nn.Conv2d(len(self.FEATURE_BLOCKS) * vit_dim, embed_dim, 1)
        self.swintransformer1 = _ScaleSwin(embed_dim, **swin)
        self.tablock2 = nn.ModuleList(_TransposedAttention(grid * grid) for _ in range(num_tab))
        self.conv2 = nn.Conv2d(embed_dim, embed_dim // 2, 1)
        self.swintransformer2 = _ScaleSwin(embed_dim // 2, **swin)
        half = embed_dim // 2
        # index 2 is the training-time dropout, so the linears keep the checkpoint's indices 0 and 3
        self.fc_score = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Identity(), nn.Linear(half, 1), nn.ReLU())
        self.fc_weight = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Identity(), nn.Linear(half, 1),
                                       nn.Sigmoid())

    @staticmethod
    def unused(key: str) -> bool:
        """Checkpoint tensors MANIQA never uses: the ViT's last blocks, final norm and classifier, and the Swin
        modules' ``downsample`` conv (defined but never called)."""
        block = re.match(r"vit\.blocks\.(\d+)\.", key)
        return (key.startswith(("vit.norm.", "vit.head.", "swintransformer1.downsample.",
                                "swintransformer2.downsample."))
                or (block is not None and int(block.group(1)) > max(MANIQA.FEATURE_BLOCKS)))

    @classmethod
    def from_file(cls, path: str, num_crops: int = 20, seed: int = 0) -> "MANIQA":
        """Reads the authors' ``ckpt_koniq10k.pt`` (a state dict that includes the ViT-B/8 backbone)."""
        return cls.from_state_dict(_state_dict(path), path, num_crops, seed)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], path: str, num_crops: int = 20,
                        seed: int = 0) -> "MANIQA":
        """Builds the model from a checkpoint's tensors (``path`` names it in errors). Sizes come from the tensor
        shapes (ViT width, patch and token grid; channels; Swin depths, heads, window and MLP); every tensor is
        checked by name and shape. The tensors are used as they are (meta tensors give a model on the meta
        device)."""
        what = "MANIQA"
        _, tokens, vit_dim = _need(state, "vit.pos_embed", path, what).shape
        grid = math.isqrt(tokens - 1)
        _divisible(vit_dim, cls.VIT_HEADS, path, what, "ViT width")
        table = _need(state, "swintransformer1.layers.0.blocks.0.attn.relative_position_bias_table", path, what)
        window, swin_heads = (math.isqrt(table.shape[0]) + 1) // 2, table.shape[1]
        embed_dim = _need(state, "conv1.weight", path, what).shape[0]
        _divisible(embed_dim // 2, swin_heads, path, what, "second Swin width")
        _divisible(grid, window, path, what, "token grid")
        depths = tuple(_count(state, rf"swintransformer1\.layers\.{i}\.blocks\.\d+\.norm1\.weight")
                       for i in range(_count(state, r"swintransformer1\.layers\.\d+\.conv\.weight")))
        model_args = dict(
            vit_dim=vit_dim, grid=grid, embed_dim=embed_dim, depths=depths, swin_heads=swin_heads, window=window,
            vit_mlp=_need(state, "vit.blocks.0.mlp.fc1.weight", path, what).shape[0],
            patch=_need(state, "vit.patch_embed.proj.weight", path, what).shape[-1],
            num_tab=_count(state, r"tablock1\.\d+\.c_q\.weight"),
            swin_mlp=_need(state, "swintransformer1.layers.0.blocks.0.mlp.fc1.weight", path, what).shape[0])
        with torch.device("meta"):
            model = cls(**model_args, num_crops=num_crops, seed=seed)
        _load_layout(model, state, path, what, ignored=cls.unused)
        return model.eval()

    def vit_features(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops :math:`(B, 3, S, S)` -> the patch tokens of the feature blocks, concatenated along
        channels :math:`(B, N, 4 D)`."""
        x = self.vit.patch_embed.proj(crops).flatten(2).transpose(1, 2)
        x = torch.cat([self.vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.vit.pos_embed
        features = []
        for i, block in enumerate(self.vit.blocks):
            x = block(x)
            if i in self.FEATURE_BLOCKS:
                features.append(x[:, 1:])
        return torch.cat(features, dim=-1)

    def patch_scores(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised crops :math:`(B, 3, S, S)` -> per-patch scores and weights, each :math:`(B, N)`."""
        x = self.vit_features(crops).transpose(1, 2)
        b, grid = x.shape[0], self.crop // self.vit.patch_embed.proj.kernel_size[0]
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.reshape(b, -1, grid, grid))).flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.reshape(b, -1, grid, grid))).flatten(2).transpose(1, 2)
        return self.fc_score(x)[..., 0], self.fc_weight(x)[..., 0]

    def crop_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops :math:`(B, 3, S, S)` -> :math:`\\sum_i w_i s_i / \\sum_i w_i` :math:`(B,)`."""
        score, weight = self.patch_scores(crops)
        return (weight * score).sum(-1) / weight.sum(-1)

    def crop_positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """``num_crops`` (top, left) corners of S × S crops, uniform over the image, from a generator seeded with
        ``seed``."""
        g = torch.Generator().manual_seed(self.seed)
        tops = torch.randint(0, height - self.crop + 1, (self.num_crops,), generator=g)
        lefts = torch.randint(0, width - self.crop + 1, (self.num_crops,), generator=g)
        return list(zip(tops.tolist(), lefts.tolist()))

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> :math:`(B, 3, H', W')` in [-1, 1], resized (bilinear) so that the
        shorter side is at least the crop size."""
        check_image(image)
        x = image.movedim(-1, 1).to(self.conv1.weight) * 2 - 1
        h, w = x.shape[-2:]
        if min(h, w) < self.crop:
            size = (self.crop, round(w * self.crop / h)) if h <= w else (round(h * self.crop / w), self.crop)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> the mean crop score :math:`(B,)` float64; the reference is
        ignored."""
        x, s = self.prepare(image), self.crop
        scores = [self.crop_scores(x[..., top:top + s, left:left + s])
                  for top, left in self.crop_positions(*x.shape[-2:])]
        return torch.stack(scores).mean(0).double().cpu()


_CLIP_SOURCE = ("from a transformers CLIP folder such as huggingface.co/openai/clip-vit-base-patch32 (copy its files "
                "into this folder)")

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
        (WeightFile("vgg16-397923af.pth",
                    "torchvision's ImageNet VGG16 weights (download.pytorch.org/models/vgg16-397923af.pth)"),
         WeightFile("weights.pt", "the DISTS alpha/beta weights, DISTS_pytorch/weights.pt in the dingkeyan93/DISTS "
                                  "repository or the 'dists-pytorch' pip package")),
        lower_is_better=True, build=DISTS.from_files),
    LearnedMetricSpec(
        "clipiqa", "CLIP-IQA",
        (WeightFile("config.json", f"the model config, {_CLIP_SOURCE}"),
         WeightFile("model.safetensors", f"the CLIP weights, {_CLIP_SOURCE}", alternatives=("pytorch_model.bin",)),
         WeightFile("preprocessor_config.json", f"the image preprocessing settings, {_CLIP_SOURCE}"),
         WeightFile("vocab.json", f"the tokenizer vocabulary, {_CLIP_SOURCE}"),
         WeightFile("merges.txt", f"the tokenizer merges, {_CLIP_SOURCE}")),
        lower_is_better=False, build=CLIPIQA.from_files, no_reference=True),
    LearnedMetricSpec(
        "musiq", "MUSIQ (KonIQ-10k)",
        (WeightFile("musiq_koniq_ckpt-e95806b9.pth",
                    "pyiqa's PyTorch conversion of google-research/musiq's KonIQ-10k checkpoint (koniq_ckpt.npz), "
                    "from the chaofengc/IQA-PyTorch releases or the Hugging Face repository "
                    "chaofengc/IQA-PyTorch-Weights"),),
        lower_is_better=False, build=MUSIQ.from_file, no_reference=True),
    LearnedMetricSpec(
        "maniqa", "MANIQA (KonIQ-10k)",
        (WeightFile("ckpt_koniq10k.pt",
                    "the MANIQA KonIQ-10k checkpoint (it includes the ViT-B/8 backbone), from the 'Koniq10k' release "
                    "of IIGROUP/MANIQA or the Hugging Face repository chaofengc/IQA-PyTorch-Weights"),),
        lower_is_better=False, build=MANIQA.from_file, no_reference=True),
)}


def load_learned_metric(name: str, iqa_dir: str | None = None) -> Metric:
    """Builds a learned metric from ``<iqa_dir>/<name>/``; the result maps (image, reference) IMAGE pairs to
    :math:`(B,)` float64 scores on the CPU (no-reference metrics ignore the reference).

    Raises:
        ValueError: unknown metric, or a file of the wrong kind.
        MissingWeightsError: a weight file is missing; the message names the file, its folder and its source.
    """
    if name not in LEARNED_METRICS:
        raise ValueError(f"unknown learned metric {name!r}; choose one of: {', '.join(LEARNED_METRICS)}.")
    if iqa_dir is None:
        raise ValueError("the folder of learned-metric weights must be given (iqa_dir=..., or --iqa-dir on the "
                         "command line), e.g. ComfyUI/models/iqa.")
    spec = LEARNED_METRICS[name]
    folder = os.path.join(iqa_dir, name)
    paths = []
    for f in spec.files:
        path = f.find(folder)
        if path is None:
            names = " or ".join((f.filename, *f.alternatives))
            raise MissingWeightsError(f"{spec.title} needs the weight file {names} in {folder} (missing: "
                                      f"{os.path.join(folder, f.filename)}). It is {f.source}. Put it there; this "
                                      "pack never downloads weights.")
        paths.append(path)
    return spec.build(*paths)
