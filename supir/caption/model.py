"""Captions from a local vision-language model through transformers' own classes: the folder's processor (the image
by its PIL image processor, the prompt by its chat template) and model, from local files only, safetensors only,
never the model's own code."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..image.io import image_to_pil
from .folder import VLMFolderError, inspect_vlm_folder

# SSP-IR's instruction to its MLLM (Zhang et al., SSP-IR, section III-B)
DEFAULT_INSTRUCTION = ("Describe the image in a very detailed manner if we remove the degradation artifacts from "
                       "the image.")
LOCAL = dict(local_files_only=True, trust_remote_code=False)


@dataclass
class VLM:
    """A loaded vision-language model: ``model`` (a transformers ``...ForConditionalGeneration``) and its
    ``processor``; ``path`` is its folder."""
    model: object
    processor: object
    model_type: str
    path: str


def image_only(processor_class: type) -> type:
    """``processor_class`` without its video processor, which captions never use and which transformers builds only
    where torchvision is installed (Qwen VL); other processors are returned as they are."""
    if "video_processor" not in inspect.signature(processor_class.__init__).parameters:
        return processor_class

    def __init__(self, image_processor, tokenizer, chat_template=None, **kwargs):
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
    # the processor's sub-processors are the modality arguments of its __init__: here the image processor and tokenizer
    return type(processor_class.__name__, (processor_class,), {"__init__": __init__})


def load_vlm(path: str, dtype: torch.dtype = torch.float32) -> VLM:
    """The model in ``path`` (checked by :func:`inspect_vlm_folder` first) on the CPU in ``dtype``, and its processor
    with PIL image processing (the same pixels with or without torchvision).

    Raises:
        VLMFolderError: the folder is not a loadable model, has no chat template, or its weights do not fit the
            family's transformers class (e.g. a folder in the layout of the model's own code).
    """
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    if int(transformers.__version__.split(".")[0]) < 5:
        raise VLMFolderError(f"captions need transformers 5 or newer (installed: {transformers.__version__}); "
                             f"update it in ComfyUI's Python: python -m pip install -U \"transformers>=5\"")
    folder = inspect_vlm_folder(path)
    processor_class = image_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[folder.model_type]))
    image_processor = transformers.AutoImageProcessor.from_pretrained(path, backend="pil", **LOCAL)
    processor = processor_class.from_pretrained(path, image_processor=image_processor, **LOCAL)
    if folder.model_type != "florence2" and not processor.chat_template:
        raise VLMFolderError(f"{path}: no chat template (chat_template.json or chat_template.jinja); download the "
                             f"model's processor files too.")
    model_class = getattr(transformers, folder.model_class)
    model, info = model_class.from_pretrained(path, dtype=dtype, use_safetensors=True, output_loading_info=True,
                                              **LOCAL)
    missing = info["missing_keys"]
    if missing:
        raise VLMFolderError(f"{path}: {len(missing)} weights of transformers' {folder.model_class} are not in the "
                             f"files (e.g. {sorted(missing)[0]}): the folder is in another layout, such as the "
                             f"original repository's for the model's own code. Use the model's transformers-format "
                             f"version (see README, 'Captions').")
    return VLM(model.eval(), processor, folder.model_type, path)


def prompt_text(vlm: VLM, instruction: str) -> str:
    """The text the model reads with the image: the instruction in the model's chat template as a user turn after
    the image, ending where the assistant's answer starts; Florence-2 takes the instruction as it is (a task token
    such as ``<MORE_DETAILED_CAPTION>`` or plain text)."""
    if vlm.model_type == "florence2":
        return instruction
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return vlm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines too) made single spaces: a caption is one line."""
    return " ".join(text.split())


def caption_image(vlm: VLM, image: torch.Tensor, instruction: str = DEFAULT_INSTRUCTION, max_tokens: int = 128,
                  seed: int | None = None, min_tokens: int = 0) -> str:
    """The caption of IMAGE-layout :math:`(H, W, C)` in [0, 1], as one line: greedy decoding (``seed`` None) or
    sampling with the model's generation settings from ``seed``; at most ``max_tokens`` new tokens (at least
    ``min_tokens``: a fixed length for timing)."""
    device = vlm.model.device
    inputs = vlm.processor(images=[image_to_pil(image[..., :3])], text=[prompt_text(vlm, instruction)],
                           return_tensors="pt")
    inputs = {k: v.to(device, vlm.model.dtype if v.is_floating_point() else None) for k, v in inputs.items()}
    settings = dict(max_new_tokens=max_tokens, min_new_tokens=min_tokens, do_sample=seed is not None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        tokens = vlm.model.generate(**inputs, **settings)[0]
    if not vlm.model.config.is_encoder_decoder:
        tokens = tokens[inputs["input_ids"].shape[1]:]
    return one_line(vlm.processor.decode(tokens, skip_special_tokens=True))


def caption_images(vlm: VLM, images: list[torch.Tensor], instruction: str = DEFAULT_INSTRUCTION,
                   max_tokens: int = 128, seed: int | None = None,
                   done: Callable[[int], None] | None = None) -> list[str]:
    """:func:`caption_image` of each image in turn, each from the same ``seed``; ``done(i)`` after image ``i``."""
    captions = []
    for i, image in enumerate(images):
        captions.append(caption_image(vlm, image, instruction, max_tokens, seed))
        if done is not None:
            done(i)
    return captions


def steer(caption: str, prefix: str = "", suffix: str = "") -> str:
    """``prefix``, the caption and ``suffix`` joined by spaces, as one line."""
    return one_line(" ".join((prefix, caption, suffix)))
