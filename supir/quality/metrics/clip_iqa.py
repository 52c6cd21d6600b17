"""CLIP-IQA on a transformers CLIP model, and the CLIP folder loading and image embedding that CLIP-I shares."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ...image.io import image_to_pil
from ...weights import WeightsFileError, names, read_state_dict
from ..degradation import check_image


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
                raise ValueError(f"CLIP: the resized {h}x{w} image is smaller than the {ch}x{cw} crop of the "
                                 "preprocessor config; use the folder's own preprocessor_config.json.")
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, top:top + ch, left:left + cw]
        return (x - torch.tensor(self.mean).view(3, 1, 1)) / torch.tensor(self.std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> pixel values :math:`(B, 3, h, w)` float32 on the CPU."""
        check_image(image)
        return torch.stack([self.one(img) for img in image.cpu()])


def load_clip(config_path: str, weights_path: str, preprocessor_path: str,
              metric: str) -> tuple[nn.Module, CLIPPreprocess]:
    """A transformers ``CLIPModel`` (eval mode, local files only) of ``config_path`` with the weights of
    ``weights_path`` (read by the pack's weights reader: safetensors, or a pickle weights-only), and the image
    preprocessing of its ``preprocessor_config.json``, checked to give the vision tower's input size. ``metric``
    names the metric in errors."""
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "clip":
        raise ValueError(f"{config_path}: {metric} needs a transformers CLIPModel folder (model_type 'clip'); this "
                         f"one is {model_type!r}. Use e.g. openai/clip-vit-base-patch32; the RN50 CLIP of the "
                         "CLIP-IQA paper has no transformers port.")
    try:
        from transformers import CLIPConfig, CLIPModel
    except ImportError as e:
        raise ImportError(f"{metric} needs the 'transformers' package (ComfyUI installs it): "
                          "pip install transformers.") from e
    config = CLIPConfig.from_pretrained(os.path.dirname(config_path), local_files_only=True)
    model, info = CLIPModel.from_pretrained(None, config=config, state_dict=read_state_dict(weights_path),
                                            output_loading_info=True)
    if info["missing_keys"]:
        raise WeightsFileError(f"{weights_path}: the tensors do not fit the CLIP model of {config_path}: missing "
                               f"{names(sorted(info['missing_keys']))}. Copy the weights and config.json from the "
                               "same CLIP model folder.")
    model.eval()
    preprocess = CLIPPreprocess.from_config(preprocessor_path)
    image_size = model.config.vision_config.image_size
    if preprocess.crop != (image_size, image_size):
        raise ValueError(f"{preprocessor_path}: crop {preprocess.crop} does not give the {image_size}x{image_size} "
                         "input this CLIP's vision tower takes; use the folder's own preprocessor_config.json.")
    return model, preprocess


@torch.no_grad()
def clip_image_embeds(clip: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Preprocessed pixels :math:`(B, 3, S, S)` -> unit-length projected image embeddings :math:`(B, D)` of a
    ``CLIPModel`` (its ``get_image_features``, normalised)."""
    projection = clip.visual_projection
    vision = clip.vision_model(pixel_values=pixel_values.to(projection.weight))
    return F.normalize(projection(vision.pooler_output), dim=-1)


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
    def from_files(cls, config_path: str, weights_path: str, preprocessor_path: str,
                   *_tokenizer_paths: str) -> "CLIPIQA":
        """Loads the ``CLIPModel``, its tokenizer and its preprocessing from these files (transformers finds the
        tokenizer files in their folder itself; local files only)."""
        model, preprocess = load_clip(config_path, weights_path, preprocessor_path, "CLIP-IQA")
        from transformers import CLIPTokenizer
        tokenizer = CLIPTokenizer.from_pretrained(os.path.dirname(config_path), local_files_only=True)
        tokens = tokenizer(list(cls.PROMPTS), padding=True, return_tensors="pt")
        with torch.no_grad():
            text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text_embeds = F.normalize(model.text_projection(text.pooler_output), dim=-1)
        return cls(model, text_embeds, preprocess)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> probability of "Good photo." :math:`(B,)` float64; the reference
        is ignored (no-reference metric)."""
        cosine = clip_image_embeds(self.clip, self.preprocess(image)) @ self.text_embeds.T
        return (self.LOGIT_SCALE * cosine.double()).softmax(dim=-1)[:, 0].cpu()
