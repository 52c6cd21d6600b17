"""CLIP-I: the cosine similarity of the CLIP image embeddings of an image and its reference."""
from __future__ import annotations

import torch
from torch import nn

from ..degradation import check_image
from .clip_iqa import CLIPPreprocess, clip_image_embeds, load_clip


class CLIPI(nn.Module):
    """CLIP-I, the semantic-fidelity measure SSP-IR reports (after DreamBooth's image-alignment score): the cosine
    similarity of the projected CLIP image embeddings (``CLIPModel.get_image_features``) of the restored image and
    of the HQ image, in [-1, 1]; 1 for identical images, higher is better.

    SSP-IR cites CLIP (Radford et al. 2021) but names neither the backbone nor the preprocessing; this uses the
    transformers ``CLIPModel`` folder CLIP-IQA reads (e.g. openai/clip-vit-base-patch32), and both images are
    preprocessed as its ``preprocessor_config.json`` says (8-bit, short side resized, centre crop), exactly as
    transformers' ``CLIPImageProcessor``. Scores from different backbones are not comparable.
    """

    def __init__(self, clip_model: nn.Module, preprocess: CLIPPreprocess):
        super().__init__()
        self.clip = clip_model
        self.preprocess = preprocess

    @classmethod
    def from_files(cls, config_path: str, weights_path: str, preprocessor_path: str) -> "CLIPI":
        """Loads the ``CLIPModel`` and its preprocessing from these files (no tokenizer needed)."""
        return cls(*load_clip(config_path, weights_path, preprocessor_path, "CLIP-I"))

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` and its reference (same batch, any size) in [0, 1] -> cosine similarity
        :math:`(B,)` float64."""
        check_image(image, "image")
        check_image(reference, "reference")
        if reference.shape[0] != image.shape[0]:
            raise ValueError(f"CLIP-I: reference batch {reference.shape[0]} does not match image batch "
                             f"{image.shape[0]}.")
        a, b = (clip_image_embeds(self.clip, self.preprocess(t)).double() for t in (image, reference))
        return (a * b).sum(dim=-1).cpu()
