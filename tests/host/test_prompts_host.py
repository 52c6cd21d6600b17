"""Tier 2: SUPIR Conditioning with ComfyUI's real SDXL tokenizer and tiny SDXL text encoders."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from helpers import assert_close_relative  # noqa: E402
from supir_restore.nodes.prompt_nodes import SUPIRConditioning  # noqa: E402
from supir_restore.supir.sampling.prompts import DEFAULT_NEGATIVE, DEFAULT_POSITIVE, positive_text  # noqa: E402

CAPTION = ("The image shows an old wooden fishing boat pulled up on a pebble beach at low tide, its blue paint "
           "peeling in long strips, a coil of orange rope and two rusty anchors resting in the bow, gulls standing "
           "on the rocks nearby, a grey stone harbour wall and a row of whitewashed cottages with slate roofs in "
           "the background under a pale overcast sky, and a man in a yellow raincoat mending nets on an upturned "
           "crate beside the boat")


def words(clip, text):
    """Token ids of ``text`` without start/end/padding, for the CLIP-L tokenizer."""
    ids = [t for chunk in clip.tokenize(text)["l"] for t, _ in chunk]
    return [t for t in ids if t not in (49406, 49407)]


def test_long_caption_keeps_the_quality_suffix(tiny_clip):
    text = positive_text(CAPTION, DEFAULT_POSITIVE)
    tokens = tiny_clip.tokenize(text)
    assert len(tokens["l"]) >= 2 and len(tokens["g"]) == len(tokens["l"])  # more than 77: split into chunks
    suffix = words(tiny_clip, DEFAULT_POSITIVE)
    all_ids = words(tiny_clip, text)
    assert all_ids[-len(suffix):] == suffix  # every quality word is encoded, last
    positive, negative = SUPIRConditioning.execute(tiny_clip, CAPTION, DEFAULT_POSITIVE, DEFAULT_NEGATIVE,
                                                   "1024 (official)", False).result
    context, extra = positive[0]
    assert context.shape == (1, 77 * len(tokens["l"]), 2048) and extra["pooled_output"].shape == (1, 1280)
    expected, _ = tiny_clip.encode_from_tokens(tokens, return_pooled=True)
    torch.testing.assert_close(context, expected, rtol=0, atol=0)  # the node encodes the same tokens
    assert (extra["width"], extra["height"], extra["target_width"], extra["crop_h"]) == (1024, 1024, 1024, 0)
    assert negative[0][0].shape == (1, 77, 2048)


def test_image_size_conditioning_and_per_image_captions(tiny_clip):
    hint = {"samples": torch.zeros(2, 4, 12, 8)}
    positive, _ = SUPIRConditioning.execute(tiny_clip, "a boat\n" + CAPTION, "", DEFAULT_NEGATIVE, "image size",
                                            True, hint).result
    context, extra = positive[0]
    assert context.shape[0] == 2 and (extra["width"], extra["height"]) == (64, 96)
    single, _ = tiny_clip.encode_from_tokens(tiny_clip.tokenize("a boat"), return_pooled=True)
    empty, _ = tiny_clip.encode_from_tokens(tiny_clip.tokenize(""), return_pooled=True)
    long, _ = tiny_clip.encode_from_tokens(tiny_clip.tokenize(CAPTION), return_pooled=True)
    assert context.shape[1] == long.shape[1] > 77  # the short caption padded to the long one's chunks
    # the same text encoder, run on a batch of two captions: float32 rounding of batched kernels
    assert_close_relative(context[0, :77], single[0], 1e-5)
    assert_close_relative(context[0, 77:154], empty[0], 1e-5)
    with pytest.raises(ValueError, match="needs the hint"):
        SUPIRConditioning.execute(tiny_clip, "a", "", "", "image size", False)
