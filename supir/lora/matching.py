"""Which of a LoRA file's tensors fit which weights of a model, and the reports about it: plain torch, on a key
map and weight shapes that ``host/lora_stack.py`` reads from ComfyUI."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .formats import LoraFormatError, LowRank, convert_peft, inspect_lora, kohya_name, low_rank_modules, \
    lycoris_modules

LISTED_IGNORED = 8


class LoraMismatchError(ValueError):
    """A LoRA none of whose tensors fits the model it is applied to."""


@dataclass
class LoraResult:
    """What applying one LoRA did: file tensors used and ignored, and the model/CLIP weights patched."""
    name: str
    strength: float
    used: int
    ignored: list[str]
    unet_weights: int
    clip_weights: int
    wrong_shape: int

    def describe(self) -> str:
        line = (f"{self.name} (strength {self.strength:g}): {self.used} of {self.used + len(self.ignored)} tensors "
                f"applied → {self.unet_weights} UNet weights, {self.clip_weights} text-encoder weights")
        if self.ignored:
            shown = ", ".join(self.ignored[:LISTED_IGNORED]) + (" …" if len(self.ignored) > LISTED_IGNORED else "")
            line += f"; {len(self.ignored)} ignored: {shown}"
        if self.wrong_shape:
            line += f" ({self.wrong_shape} layers matched by name but not by shape)"
        return line


def module_of(key: str, key_map: dict[str, str]) -> str | None:
    """The longest prefix of a file key, cut at a '.' (or before ``_lora.``), that ``key_map`` knows."""
    cuts = [i for i, c in enumerate(key) if c == "."]
    if "_lora." in key:
        cuts.append(key.index("_lora."))
    for cut in sorted(cuts, reverse=True):
        if key[:cut] in key_map:
            return key[:cut]
    return None


def fits(up: torch.Tensor, down: torch.Tensor, shape: torch.Size) -> bool:
    """Whether up @ down can be a delta of a weight of ``shape`` (not another base model's layer of that name)."""
    return up.shape[0] == shape[0] and math.prod(down.shape[1:]) == math.prod(shape[1:])


def mismatch_message(name: str, sd: dict[str, torch.Tensor], with_clip: bool) -> str:
    info = inspect_lora(sd)
    target = "this SDXL UNet" + (" or its text encoders" if with_clip else "")
    origin = (f"It looks made for {info.base}" if info.base != "unknown" else "Its base model is unknown") + \
        f" ({info.base_reason}; format {info.format})"
    return (f"LoRA {name!r} changes nothing: none of its {len(sd)} tensors fits a layer of {target} by name and "
            f"shape. {origin}. Use a LoRA trained for SDXL — the model SUPIR restores with — or remove it from the "
            f"stack.")


def model_modules(sd: dict[str, torch.Tensor], name: str, key_map: dict[str, str],
                  shapes: dict[str, torch.Size]) -> tuple[dict[str, LowRank], int]:
    """The file's LoRA modules that fit a model weight, renamed to that weight's kohya name (so LoRAs in different
    formats add up per layer), and the number of modules that fit none."""
    converted = convert_peft(sd)
    lycoris = lycoris_modules(converted)
    if lycoris:
        raise LoraFormatError(f"LoRA {name!r} has {len(lycoris)} LyCORIS modules (e.g. {lycoris[0]!r}); merging "
                              f"supports plain LoRA/LoCon (up/down pairs) only. Apply it with SUPIR LoRA Stack, or "
                              f"bake the stack into a checkpoint instead.")
    modules, found = {}, low_rank_modules(converted)
    for module, low_rank in found.items():
        target = key_map.get(module)
        if isinstance(target, str) and target in shapes and fits(low_rank.up, low_rank.down, shapes[target]):
            modules[kohya_name(target)] = low_rank
    if not modules:
        raise LoraMismatchError(mismatch_message(name, sd, with_clip=any(k.startswith("clip_") for k in shapes)))
    return modules, len(found) - len(modules)
