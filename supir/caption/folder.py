"""A local vision-language model folder (transformers' layout: ``config.json``, safetensors weights, tokenizer and
processor files) checked before anything is loaded: which family it is, and what is missing, named with the fix."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..weights import WeightsFileError, check_safetensors

# model_type in config.json -> transformers' native class; only these families load (no trust_remote_code)
FAMILIES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "florence2": "Florence2ForConditionalGeneration",
}
WHERE = "ComfyUI/models/LLM/<name>/ or ComfyUI/models/vlm/<name>/"


class VLMFolderError(ValueError):
    """A folder that is not a loadable vision-language model; the message names the folder and the fix."""


@dataclass(frozen=True)
class VLMFolder:
    path: str
    model_type: str
    model_class: str


def inspect_vlm_folder(path: str) -> VLMFolder:
    """The family of the model in ``path``, after checking that it can load locally with transformers' own classes:
    a ``config.json`` of a supported ``model_type``, weights as safetensors, and tokenizer/processor files."""
    if not os.path.isdir(path):
        raise VLMFolderError(f"{path}: no such folder. Put a vision-language model (its config.json, *.safetensors "
                             f"and tokenizer/processor files) in {WHERE}.")
    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise VLMFolderError(f"{path}: config.json is missing; this is not a transformers model folder. Download "
                             f"the whole model repository into {WHERE}.") from None
    except (OSError, ValueError) as e:
        raise VLMFolderError(f"{config_path}: cannot be read ({e}); download it again.") from e
    model_type = config.get("model_type") if isinstance(config, dict) else None
    remote = isinstance(config, dict) and config.get("auto_map")
    if model_type not in FAMILIES:
        needs = " It needs the model's own code (auto_map), which this pack never runs." if remote else ""
        raise VLMFolderError(f"{path}: model_type {model_type!r} is not a supported vision-language model.{needs} "
                             f"Use one transformers has a native class for: {', '.join(FAMILIES)}.")
    if remote:
        raise VLMFolderError(f"{path}: this {model_type} folder is written for the model's own code (auto_map), "
                             f"which this pack never runs. Use the model's transformers-format version (see README, "
                             f"'Captions'), e.g. florence-community/Florence-2-base for Florence-2.")
    files = sorted(os.listdir(path))
    check_no_remote_code(path, files)
    weights = [f for f in files if f.endswith(".safetensors")]
    if not weights:
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {', '.join(pickles)}: pickles are not loaded)" if pickles else ""
        raise VLMFolderError(f"{path}: no .safetensors weights{hint}. Download the model's safetensors files.")
    for name in weights:
        try:
            check_safetensors(os.path.join(path, name))
        except WeightsFileError as e:
            raise VLMFolderError(f"{e} (in the model folder {path})") from None
    if not any(f in files for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise VLMFolderError(f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json). Download the "
                             f"whole model repository, tokenizer and processor files included.")
    return VLMFolder(path, model_type, FAMILIES[model_type])


def check_no_remote_code(path: str, files: list[str]) -> None:
    """No JSON file of the folder besides config.json (the processor's, image processor's, tokenizer's) names the
    model's own code in an ``auto_map``: transformers would ask for ``trust_remote_code`` rather than use its native
    class."""
    for name in files:
        if not name.endswith(".json") or name == "config.json" or name.endswith(".index.json"):
            continue
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                settings = json.load(f)
        except (OSError, ValueError) as e:
            raise VLMFolderError(f"{os.path.join(path, name)}: cannot be read ({e}); download it again.") from e
        if isinstance(settings, dict) and settings.get("auto_map"):
            classes = ", ".join(map(str, settings["auto_map"]))
            raise VLMFolderError(f"{path}: {name} names the model's own code (auto_map: {classes}), which this pack "
                                 f"never runs. Use the model's transformers-format version (see README, 'Captions'), "
                                 f"or, if the rest of the folder is in that format, delete the auto_map entry from "
                                 f"{name}.")
