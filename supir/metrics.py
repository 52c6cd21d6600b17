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
import os
from dataclasses import dataclass
from typing import Callable

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

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
    """A learned metric: its files in ``<iqa_dir>/<name>/`` and a builder from their paths (None: not implemented).

    A no-reference metric scores the image alone; its metric function ignores the reference.
    """
    name: str
    title: str
    files: tuple[WeightFile, ...]
    lower_is_better: bool
    build: Callable[..., Metric] | None = None
    no_reference: bool = False


def _need(state: dict, key: str, path: str, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``; a ValueError naming the file when it is missing or (if ``shape`` is given) of another shape."""
    if key not in state:
        raise ValueError(f"{path} is not a {what} file: it has no tensor {key!r}.")
    if shape is not None and tuple(state[key].shape) != shape:
        raise ValueError(f"{path} is not a {what} file: {key!r} has shape {tuple(state[key].shape)}, expected "
                         f"{shape}.")
    return state[key]


def _load_pickle(path: str) -> dict:
    """A ``.pt``/``.pth`` state dict; ``weights_only``, so nothing in the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt or foreign pickles
        raise ValueError(f"{path} could not be read as a PyTorch weight file ({type(e).__name__}: {e}). "
                         "Download it again.") from e


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
        trunk, heads = _load_pickle(alexnet_path), _load_pickle(heads_path)
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
        vgg, weights = _load_pickle(vgg_path), _load_pickle(weights_path)
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
        (WeightFile("koniq_ckpt.npz", "the MUSIQ KonIQ-10k checkpoint from google-research/musiq"),),
        lower_is_better=False, no_reference=True),
    LearnedMetricSpec(
        "maniqa", "MANIQA (KonIQ-10k)",
        (WeightFile("ckpt_koniq10k.pt", "the MANIQA KonIQ-10k checkpoint from IIGROUP/MANIQA"),),
        lower_is_better=False, no_reference=True),
)}
IMPLEMENTED_METRICS = tuple(name for name, spec in LEARNED_METRICS.items() if spec.build is not None)


def default_iqa_dir() -> str:
    """``ComfyUI/models/iqa``, resolved through ComfyUI's ``folder_paths`` (imported only here, when needed)."""
    try:
        import folder_paths
    except ImportError as e:
        raise ValueError("outside ComfyUI the folder of learned-metric weights must be given explicitly "
                         "(iqa_dir=..., or --iqa-dir on the command line), e.g. ComfyUI/models/iqa.") from e
    return os.path.join(folder_paths.models_dir, "iqa")


def load_learned_metric(name: str, iqa_dir: str | None = None) -> Metric:
    """Builds a learned metric from ``<iqa_dir>/<name>/``; the result maps (image, reference) IMAGE pairs to
    :math:`(B,)` float64 scores on the CPU (no-reference metrics ignore the reference).

    Raises:
        ValueError: unknown metric, or a file of the wrong kind.
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
                                  f"from {folder}); implemented learned metrics: {', '.join(IMPLEMENTED_METRICS)}.")
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
