"""Tier 1: SUPIR's prompt assembly and batching, with a stand-in CLIP that chunks like ComfyUI's."""
import pytest
import torch

from supir_restore.supir.sampling.prompts import (DEFAULT_NEGATIVE, DEFAULT_POSITIVE, positive_text, split_captions,
                                         supir_conditioning)


class ChunkingClip:
    """Words are tokens; every 75 tokens make a 77-token chunk encoded to [1, 77, 8]; pooled is [1, 4].
    The encoding of a word is a hash-seeded vector, so the test can tell which words were encoded."""

    def tokenize(self, text):
        words = text.replace(",", " ").split()
        return [words[i:i + 75] for i in range(0, max(len(words), 1), 75)]

    @staticmethod
    def embed(word):
        return torch.randn(8, generator=torch.Generator().manual_seed(abs(hash(word)) % (2 ** 31)))

    def encode_from_tokens(self, chunks, return_pooled=False):
        out = torch.zeros(1, 77 * len(chunks), 8)
        for c, chunk in enumerate(chunks):
            for t, word in enumerate(chunk):
                out[0, 77 * c + 1 + t] = self.embed(word)
        return out, out[:, 0, :4] + len(chunks)

    def encoded_words(self, context):
        """Which of the suffix's words appear in ``context`` [N, 8]."""
        return [w for w in DEFAULT_POSITIVE.replace(",", " ").split()
                if any(torch.equal(row, self.embed(w)) for row in context)]


def test_positive_text_joins_caption_and_suffix():
    assert positive_text("", DEFAULT_POSITIVE) == DEFAULT_POSITIVE
    assert positive_text("a red car.", "Cinematic") == "a red car. Cinematic"
    assert positive_text("a red car", "Cinematic") == "a red car, Cinematic"


def test_long_caption_keeps_every_quality_word():
    clip = ChunkingClip()
    caption = " ".join(f"word{i}" for i in range(140))
    positive, negative = supir_conditioning(clip, caption)
    context = positive[0][0][0]
    assert context.shape[0] == 77 * 3  # 140 caption words + the suffix: three chunks, nothing cut
    assert clip.encoded_words(context) == DEFAULT_POSITIVE.replace(",", " ").split()
    assert negative[0][0].shape[1] == 77 and negative[0][1]["width"] == 1024


def test_per_image_captions_stack_with_padding():
    clip = ChunkingClip()
    captions = "a cat\n" + " ".join(f"w{i}" for i in range(100)) + "\n\na dog"
    assert split_captions(captions, per_line=True)[1].startswith("w0")
    positive, _ = supir_conditioning(clip, captions, per_line=True, batch=3, width=640, height=480)
    context, extra = positive[0]
    assert context.shape[:2] == (3, 77 * 2) and extra["pooled_output"].shape == (3, 4)
    assert torch.equal(context[0, 77:], clip.encode_from_tokens(clip.tokenize(""))[0][0])  # padded chunk
    assert (extra["width"], extra["height"], extra["target_width"], extra["crop_w"]) == (640, 480, 640, 0)


def test_caption_count_must_match_the_batch():
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        supir_conditioning(ChunkingClip(), "a\nb", per_line=True, batch=3)


def test_missing_clip_is_a_clear_error():
    with pytest.raises(ValueError, match="no CLIP"):
        supir_conditioning(None, "a photo", negative=DEFAULT_NEGATIVE)
