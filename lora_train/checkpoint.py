"""The training checkpoint's file rules, without ComfyUI: what may be overwritten, and a complete check of a
checkpoint (metadata types, tensor names and shapes, finite values, its step) before a run resumes from it.

A checkpoint is a safetensors file: tensors ``adapter/<weight key>/up|down`` (fp32) and ``optim/<index>/<field>``
(AdamW state of parameter ``index``: the up and down matrices of the weight keys in sorted order), and JSON
metadata ``supir_training``: version, step, losses, settings, param_groups.
"""
from __future__ import annotations

import json
import os
import re
from numbers import Real

import torch

from ..supir.checks import non_finite_tensors
from ..supir.weights import WeightsFileError, layout_problems, names, read_safetensors

CHECKPOINT_VERSION = 1
START_AFRESH = "delete it, switch resume off, or choose another lora_name to start afresh"


class CheckpointMismatchError(ValueError):
    """A training checkpoint that this run cannot resume from; the message names the file and the fix."""


def check_overwrite(lora_path: str, checkpoint_path: str, overwrite: bool) -> None:
    """A training run writes ``lora_path`` only when it is free, when the run's own checkpoint shows an earlier run
    of this name made it, or when ``overwrite`` allows replacing someone else's file."""
    if os.path.exists(lora_path) and not os.path.isfile(checkpoint_path) and not overwrite:
        raise FileExistsError(f"{lora_path} already exists and no training run of this lora_name made it (there "
                              f"is no checkpoint at {checkpoint_path}); choose another lora_name, or switch "
                              "overwrite on to replace the file.")


def read_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a checkpoint file; an unreadable file is an error naming it."""
    try:
        tensors, metadata = read_safetensors(path)
        meta = json.loads(metadata.get("supir_training", "{}"))
    except WeightsFileError as e:  # its own advice (download again) does not fit a file the trainer wrote
        raise CheckpointMismatchError(f"cannot read the training checkpoint {path}: it is not a readable safetensors "
                                      f"file, so the file is damaged: {START_AFRESH}.") from e
    except ValueError as e:
        raise CheckpointMismatchError(f"cannot read the training checkpoint {path} (its metadata: {e}); the file is "
                                      f"damaged: {START_AFRESH}.") from e
    if not isinstance(meta, dict) or meta.get("version") != CHECKPOINT_VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise CheckpointMismatchError(f"{path} is not a training checkpoint of this trainer (version {version!r}); "
                                      f"{START_AFRESH}.")
    return meta, tensors


def parameter_shapes(adapter_shapes: dict[str, tuple[torch.Size, torch.Size]]) -> list[torch.Size]:
    """The optimizer's parameter shapes: up and down of each weight key, keys sorted."""
    return [shape for key in sorted(adapter_shapes) for shape in adapter_shapes[key]]


def expected_tensors(adapter_shapes: dict[str, tuple[torch.Size, torch.Size]],
                     stepped: set[int]) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of a checkpoint of these adapters (``{key: (up shape, down shape)}``) whose
    optimizer has state for the parameter indices ``stepped`` (AdamW keeps none for a parameter before its first
    update)."""
    layout = {f"adapter/{key}/{part}": tuple(shape) for key, shapes in adapter_shapes.items()
              for part, shape in zip(("up", "down"), shapes)}
    for index, shape in enumerate(parameter_shapes(adapter_shapes)):
        if index in stepped:
            layout |= {f"optim/{index}/exp_avg": tuple(shape), f"optim/{index}/exp_avg_sq": tuple(shape),
                       f"optim/{index}/step": ()}
    return layout


def check_checkpoint(path: str, meta: dict, tensors: dict[str, torch.Tensor],
                     adapter_shapes: dict[str, tuple[torch.Size, torch.Size]], settings: dict, steps: int) -> None:
    """Everything a resume relies on, checked before the first step: metadata types, the settings that shape the
    run, ``step`` ≤ ``steps``, tensor names and shapes against the adapters, and finite values."""
    _check_metadata(path, meta)
    changed = [f"{k}: checkpoint {meta['settings'].get(k)!r}, now {v!r}" for k, v in settings.items()
               if meta["settings"].get(k) != v]
    if changed:
        raise CheckpointMismatchError(f"cannot resume from {path}: " + "; ".join(changed)
                                      + ". Use the same settings, or another lora_name to start afresh.")
    if meta["step"] > steps:
        raise CheckpointMismatchError(f"{path} is at step {meta['step']} but steps is {steps}; set steps to at "
                                      f"least {meta['step']} to continue it, or {START_AFRESH}.")
    stepped = {int(m.group(1)) for name in tensors if (m := re.fullmatch(r"optim/(\d+)/\w+", name))}
    if problems := layout_problems(expected_tensors(adapter_shapes, stepped),
                                   {k: tuple(t.shape) for k, t in tensors.items()}, "this run:"):
        raise CheckpointMismatchError(f"{path} does not fit this run's LoRA ({'; '.join(problems)}): it was made for "
                                      f"another model or is damaged; {START_AFRESH}.")
    if len(meta["param_groups"]) != 1 or len(meta["param_groups"][0]["params"]) != 2 * len(adapter_shapes):
        raise CheckpointMismatchError(f"{path}: its optimizer has parameter groups of "
                                      f"{[len(g['params']) for g in meta['param_groups']]} parameters, this run one "
                                      f"group of {2 * len(adapter_shapes)}; {START_AFRESH}.")
    if bad := non_finite_tensors(tensors):
        raise CheckpointMismatchError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({names(bad, 4)}): "
                                      f"the run diverged; lower the learning rate and {START_AFRESH}.")


def _check_metadata(path: str, meta: dict) -> None:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    problems = []
    if not (is_int(meta.get("step")) and meta["step"] >= 0):
        problems.append(f"step {meta.get('step')!r} is not a count of steps")
    losses = meta.get("losses")
    if not (isinstance(losses, list) and all(isinstance(v, Real) and not isinstance(v, bool) for v in losses)):
        problems.append("losses is not a list of numbers")
    elif is_int(meta.get("step")) and len(losses) != meta["step"]:
        problems.append(f"{len(losses)} losses for {meta['step']} steps")
    if not isinstance(meta.get("settings"), dict):
        problems.append("settings is not a mapping")
    groups = meta.get("param_groups")
    if not (isinstance(groups, list) and groups and all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and all(map(is_int, g["params"]))
            for g in groups)):
        problems.append("param_groups is not a list of optimizer groups")
    if problems:
        raise CheckpointMismatchError(f"{path}: damaged metadata ({'; '.join(problems)}); {START_AFRESH}.")

