"""Trainable LoRA adapters on ComfyUI's SDXL UNet, their kohya export and the resumable training checkpoint.

Adapters are ComfyUI's own trainable LoRA modules (``comfy.weight_adapter``) attached as weight wrappers on a
cloned ModelPatcher, so the base weights are never modified: ``W' = W + alpha / rank · up @ down``.
"""
from __future__ import annotations

import json
import os
import re

import safetensors.torch
import torch
from comfy.weight_adapter.lora import LoRAAdapter

from ...supir.lora.formats import kohya_name
from ...supir.weights import read_safetensors

# Which UNet linears get a LoRA. "attention" is the default (SUPIR's LoRAs and most restoration LoRAs).
TARGETS = {
    "attention": r"transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    "attention+ff": r"transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))",
    "transformer": r"(transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"
                   r"|\d+\.proj_(in|out))",
    "all": r".*",
}
CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A training checkpoint made with other LoRA settings than the run resuming from it."""


def target_keys(diffusion_model: torch.nn.Module, targets: str) -> list[str]:
    """Weight keys (``diffusion_model.<module>.weight``) of the layers ``targets`` selects, sorted: Linear layers,
    and for "all" every Linear and Conv2d of the UNet."""
    if targets not in TARGETS:
        raise ValueError(f"unknown LoRA target set {targets!r}; choose one of {', '.join(TARGETS)}")
    pattern = re.compile(TARGETS[targets] + "$")
    keys = [f"diffusion_model.{name}.weight" for name, m in diffusion_model.named_modules()
            if (isinstance(m, torch.nn.Linear) or (targets == "all" and isinstance(m, torch.nn.Conv2d)))
            and pattern.search(name)]
    if not keys:
        raise ValueError(f"the MODEL has no layers matching the LoRA targets {targets!r}; is it an SDXL UNet?")
    return sorted(keys)


def attach_adapters(patcher, keys: list[str], rank: int, alpha: float, seed: int) -> dict[str, torch.nn.Module]:
    """Add a trainable LoRA (up Kaiming-uniform from ``seed``, down zero, so the model starts unchanged) as a
    weight wrapper on each key of ``patcher`` (a clone; call before it loads). Returns {key: adapter}."""
    adapters = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for key in keys:
            weight = patcher.get_model_object(key[:-len(".weight")]).weight
            adapter = LoRAAdapter.create_train(weight, rank=rank, alpha=alpha).to(torch.float32)
            adapter.train().requires_grad_(True)
            adapter.lora_up.weight.requires_grad_(True)
            adapter.lora_down.weight.requires_grad_(True)
            patcher.add_weight_wrapper(key, adapter)
            adapters[key] = adapter
    return adapters


def trainable_parameters(adapters: dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    """The up and down matrices of every adapter, in key order (the optimizer's parameter order)."""
    return [p for key in sorted(adapters) for p in (adapters[key].lora_up.weight, adapters[key].lora_down.weight)]


def kohya_state_dict(adapters: dict[str, torch.nn.Module], shapes: dict[str, torch.Size],
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The adapters (``shapes``: the weight shape of each key) as a kohya-format LoRA (``lora_unet_<module>.lora_up/lora_down.weight``, ``.alpha``), which
    ComfyUI's stock LoraLoader and every kohya-compatible tool read."""
    sd = {}
    for key in sorted(adapters):
        a, name = adapters[key], kohya_name(key)
        up, down = a.lora_up.weight.detach(), a.lora_down.weight.detach()
        if key in shapes and len(shapes[key]) == 4:  # kohya's conv layout: down [r, in, kh, kw], up [out, r, 1, 1]
            up, down = up[:, :, None, None], down.reshape(down.shape[0], *shapes[key][1:])
        sd[f"{name}.lora_up.weight"] = up.to(dtype).contiguous().cpu()
        sd[f"{name}.lora_down.weight"] = down.to(dtype).contiguous().cpu()
        sd[f"{name}.alpha"] = torch.tensor(float(a.alpha), dtype=torch.float32)
    return sd


def save_lora(adapters: dict[str, torch.nn.Module], shapes: dict[str, torch.Size], path: str,
              metadata: dict[str, str]) -> None:
    """Write the kohya-format LoRA (fp16) to ``path`` atomically."""
    _save_atomic(kohya_state_dict(adapters, shapes), path, metadata)


def save_checkpoint(path: str, adapters: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    step: int, losses: list[float], settings: dict) -> None:
    """Everything needed to continue exactly: adapters (fp32), optimizer state, the finished step count and the
    loss history. Randomness is derived from (seed, step), so the step is the RNG state. Safetensors + JSON
    metadata; nothing is pickled."""
    tensors = {f"adapter/{k}/{p}": t.detach().contiguous().cpu()
               for k, a in adapters.items() for p, t in (("up", a.lora_up.weight), ("down", a.lora_down.weight))}
    state = optimizer.state_dict()
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            tensors[f"optim/{index}/{name}"] = torch.as_tensor(value).contiguous().cpu()
    meta = {"version": CHECKPOINT_VERSION, "step": step, "losses": losses, "settings": settings,
            "param_groups": state["param_groups"]}
    _save_atomic(tensors, path, {"supir_training": json.dumps(meta)})


def load_checkpoint(path: str, adapters: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    settings: dict) -> tuple[int, list[float]]:
    """Restore adapters and optimizer from ``path``; returns (finished steps, losses). The LoRA-shaping settings
    must match the run's."""
    tensors, metadata = read_safetensors(path)
    meta = json.loads(metadata.get("supir_training", "{}"))
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(f"{path} is not a training checkpoint of this trainer (version "
                                      f"{meta.get('version')}); delete it or choose another run name.")
    changed = [f"{k}: checkpoint {meta['settings'].get(k)!r}, now {v!r}" for k, v in settings.items()
               if meta["settings"].get(k) != v]
    if changed:
        raise CheckpointMismatchError(f"cannot resume from {path}: " + "; ".join(changed)
                                      + ". Use the same settings, or another run name to start afresh.")
    with torch.no_grad():
        for key, a in adapters.items():
            a.lora_up.weight.copy_(tensors[f"adapter/{key}/up"])
            a.lora_down.weight.copy_(tensors[f"adapter/{key}/down"])
    state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, index, field = name.split("/")
            state["state"].setdefault(int(index), {})[field] = value
    optimizer.load_state_dict(state)
    return meta["step"], meta["losses"]


def _save_atomic(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".partial"
    safetensors.torch.save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
