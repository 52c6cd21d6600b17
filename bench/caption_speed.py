"""Caption speed and memory on the CPU: one 512 x 512 caption by a vision-language model folder.

Run from the repository::

    python -m bench.caption_speed [--folder ComfyUI/models/vlm/SmolVLM-256M-Instruct] [--tokens 64]

Without ``--folder`` it times a model of SmolVLM-256M-Instruct's dimensions (Idefics3: a 12-layer 768-wide SigLIP
at 512 px in 16 px patches, a 30-layer 576-wide Llama, 64 tokens per 512 px image, images split up to 2048 px)
with random weights: the work per token is the real model's, only the words are meaningless. The caption is
exactly ``--tokens`` tokens long (the end token is held back), so the time does not depend on what is said.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from bench.proc_memory import reset_peak, status_mb
from supir.caption.model import caption_image, load_vlm


def smolvlm_256m_shaped(folder: str) -> str:
    """A random model of SmolVLM-256M-Instruct's dimensions with its processor settings, saved in ``folder``."""
    import transformers
    from tests.caption_models import idefics3_tokenizer
    tokenizer = idefics3_tokenizer()
    config = transformers.Idefics3Config(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=512, patch_size=16),
        text_config=dict(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        scale_factor=4, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(0)
    transformers.Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    image_processor = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 2048},
                                                             max_image_size={"longest_edge": 512})
    transformers.Idefics3Processor(image_processor, tokenizer, image_seq_len=64,
                                   chat_template=tokenizer.chat_template).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="a model folder (default: a random SmolVLM-256M-shaped model)")
    parser.add_argument("--tokens", type=int, default=64, help="caption length in tokens")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or smolvlm_256m_shaped(os.path.join(tmp, "smolvlm-256m-shaped"))
        reset_peak()
        before = status_mb("VmRSS")
        start = time.perf_counter()
        vlm = load_vlm(folder)
        load_s = time.perf_counter() - start
        held = status_mb("VmRSS") - before
        params = sum(p.numel() for p in vlm.model.parameters())
        image = torch.rand(args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        caption_image(vlm, image, max_tokens=args.tokens, min_tokens=args.tokens)
        caption_s = time.perf_counter() - start
        peak = status_mb("VmHWM") - before
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"model: {args.folder or 'random SmolVLM-256M-shaped'} ({params / 1e6:.0f} M parameters, "
          f"{vlm.model.dtype})")
    print(f"load: {load_s:.1f} s, holds {held:.0f} MB")
    print(f"caption of a {args.size}x{args.size} image, {args.tokens} tokens: {caption_s:.1f} s "
          f"({args.tokens / caption_s:.1f} tokens/s overall), peak {peak:.0f} MB above the start")


if __name__ == "__main__":
    main()
