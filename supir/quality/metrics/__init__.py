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

Learned metrics never download anything: their weight files are read from ``<iqa_dir>/<folder>/`` (by default
``ComfyUI/models/iqa/<metric>/``; CLIP-I reads CLIP-IQA's ``clipiqa/`` folder), and a missing file is reported by
name and folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .clip_i import CLIPI
from .clip_iqa import CLIPIQA, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPPreprocess
from .common import tf_same_pad
from .dists import DISTS
from .fidelity import BT601_Y, fidelity_metrics, psnr, rgb_to_y, ssim
from .lpips import LPIPS
from .maniqa import MANIQA
from .musiq import MUSIQ, hashed_positions

__all__ = ["BT601_Y", "CLIPI", "CLIPIQA", "CLIPPreprocess", "DISTS", "LEARNED_METRICS", "LPIPS", "LearnedMetricSpec",
           "MANIQA", "MUSIQ", "Metric", "MissingWeightsError", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "WeightFile",
           "fidelity_metrics", "hashed_positions", "load_learned_metric", "psnr", "rgb_to_y", "ssim", "tf_same_pad"]


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
    """A learned metric: its files in ``<iqa_dir>/<folder>/`` and a builder from their paths.

    A no-reference metric scores the image alone; its metric function ignores the reference. ``folder`` is the
    metric's name unless it reads another metric's files.
    """
    name: str
    title: str
    files: tuple[WeightFile, ...]
    lower_is_better: bool
    build: Callable[..., Metric]
    no_reference: bool = False
    folder: str = ""

    def __post_init__(self):
        if not self.folder:
            object.__setattr__(self, "folder", self.name)


_CLIP_SOURCE = ("from a transformers CLIP folder such as huggingface.co/openai/clip-vit-base-patch32 (copy its files "
                "into this folder)")
_CLIP_MODEL_FILES = (
    WeightFile("config.json", f"the model config, {_CLIP_SOURCE}"),
    WeightFile("model.safetensors", f"the CLIP weights, {_CLIP_SOURCE}", alternatives=("pytorch_model.bin",)),
    WeightFile("preprocessor_config.json", f"the image preprocessing settings, {_CLIP_SOURCE}"))

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
        (*_CLIP_MODEL_FILES,
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
    LearnedMetricSpec(
        "clipi", "CLIP-I (CLIP image-embedding similarity)", _CLIP_MODEL_FILES,
        lower_is_better=False, build=CLIPI.from_files, folder="clipiqa"),
)}


def load_learned_metric(name: str, iqa_dir: str | None = None) -> Metric:
    """Builds a learned metric from ``<iqa_dir>/<folder>/`` (its name, or the folder whose files it shares); the result
    maps (image, reference) IMAGE pairs to :math:`(B,)` float64 scores on the CPU (no-reference metrics ignore the
    reference).

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
    folder = os.path.join(iqa_dir, spec.folder)
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
