"""SUPIR's prompts as SDXL conditioning: caption + quality suffix, the official negative prompt, size conditioning.

Works with any ComfyUI CLIP object (``tokenize`` / ``encode_from_tokens``). ComfyUI's tokenizer splits a prompt
longer than 77 tokens into 77-token chunks and the encoder concatenates them, so unlike the official code (which
truncates at 77) the quality suffix is never cut off a long caption.
"""
from __future__ import annotations

import torch

DEFAULT_POSITIVE = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed "
                    "photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, "
                    "skin pore detailing, hyper sharpness, perfect without deformations.")
DEFAULT_NEGATIVE = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, "
                    "3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, "
                    "watermark, signature, jpeg artifacts, deformed, lowres, over-smooth")
OFFICIAL_SIZE = 1024


def positive_text(caption: str, suffix: str) -> str:
    """Caption followed by the quality suffix (officially with no separator; a comma is added where the
    caption would otherwise run into the suffix's first word)."""
    caption = caption.strip()
    if caption and suffix and caption[-1] not in ".,;:!?":
        caption += ","
    return f"{caption} {suffix}".strip() if caption else suffix


def split_captions(text: str, per_line: bool) -> list[str]:
    """One caption, or with ``per_line`` one caption per non-empty line (one per image of the batch)."""
    if not per_line:
        return [text]
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    return captions or [""]


def encode_texts(clip, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each text (any length) -> (context [len(texts), N, C], pooled [len(texts), P]). Texts that
    encode to fewer 77-token chunks are padded with the encoding of an empty chunk so they stack."""
    if clip is None:
        raise ValueError("no CLIP: the checkpoint has no text encoders; load an SDXL checkpoint with CLIP or "
                         "connect a DualCLIPLoader (clip_l + clip_g, type sdxl)")
    encoded = [clip.encode_from_tokens(clip.tokenize(t), return_pooled=True) for t in texts]
    contexts = [c for c, _ in encoded]
    if any(c.shape[1] != contexts[0].shape[1] for c in contexts):
        empty, _ = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
        contexts = pad_to_longest(contexts, empty)
    return torch.cat(contexts), torch.cat([p for _, p in encoded])


def pad_to_longest(contexts: list[torch.Tensor], empty_chunk: torch.Tensor) -> list[torch.Tensor]:
    """Contexts [1, k·77, C] of different chunk counts k, each extended with copies of the empty text's chunk
    ``empty_chunk`` [1, 77, C] to the longest, so they stack into a batch."""
    longest = max(c.shape[1] for c in contexts)
    chunk = empty_chunk.shape[1]
    return [torch.cat([c, *[empty_chunk.to(c)] * ((longest - c.shape[1]) // chunk)], dim=1) for c in contexts]


def size_conditioning(width: int, height: int) -> dict:
    """SDXL's size vector inputs: original and target size, no crop."""
    return {"width": width, "height": height, "crop_w": 0, "crop_h": 0,
            "target_width": width, "target_height": height}


def supir_conditioning(clip, caption: str = "", positive_suffix: str = DEFAULT_POSITIVE,
                       negative: str = DEFAULT_NEGATIVE, width: int = OFFICIAL_SIZE, height: int = OFFICIAL_SIZE,
                       per_line: bool = False, batch: int | None = None):
    """(positive, negative) CONDITIONING for a restore. With ``per_line`` each line of ``caption`` is the
    caption of one image; ``batch`` (when known) must then match the number of captions."""
    captions = split_captions(caption, per_line)
    if per_line and batch is not None and len(captions) not in (1, batch):
        raise ValueError(f"{len(captions)} captions for a batch of {batch} images; give one line per image "
                         f"(or one caption for all)")
    size = size_conditioning(width, height)
    context, pooled = encode_texts(clip, [positive_text(c, positive_suffix) for c in captions])
    neg_context, neg_pooled = encode_texts(clip, [negative])
    return [[context, {"pooled_output": pooled, **size}]], [[neg_context, {"pooled_output": neg_pooled, **size}]]
