"""Tier 1: SUPIR's prompt assembly and the padding that stacks per-image captions. ComfyUI's own tokenizer and its
77-token chunking are tested with the real SDXL tokenizer in tests/host/test_prompts_host.py."""
import pytest
import torch

from supir_restore.supir.sampling.prompts import (DEFAULT_NEGATIVE, DEFAULT_POSITIVE, pad_to_longest, positive_text,
                                                  split_captions, supir_conditioning)


def test_positive_text_joins_caption_and_suffix():
    assert positive_text("", DEFAULT_POSITIVE) == DEFAULT_POSITIVE
    assert positive_text("a red car.", "Cinematic") == "a red car. Cinematic"
    assert positive_text("a red car", "Cinematic") == "a red car, Cinematic"


def test_captions_split_per_line_skip_empty_lines():
    assert split_captions("a cat\n\n  a dog \n", per_line=True) == ["a cat", "a dog"]
    assert split_captions("a cat\na dog", per_line=False) == ["a cat\na dog"]
    assert split_captions("\n", per_line=True) == [""]


def test_shorter_contexts_are_padded_with_the_empty_chunk():
    g = torch.Generator().manual_seed(0)
    one, three, empty = (torch.randn(1, 77 * k, 8, generator=g) for k in (1, 3, 1))
    padded = pad_to_longest([one, three], empty)
    assert torch.equal(padded[1], three)
    assert torch.equal(padded[0], torch.cat([one, empty, empty], dim=1))


def test_caption_count_must_match_the_batch():
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        supir_conditioning(None, "a\nb", per_line=True, batch=3)


def test_missing_clip_is_a_clear_error():
    with pytest.raises(ValueError, match="no CLIP"):
        supir_conditioning(None, "a photo", negative=DEFAULT_NEGATIVE)
