"""Tier 1: the training checkpoint's rules: which LoRA file a run may write, and the complete check of a checkpoint
before a run resumes from it (each failure names the file)."""
import json
import math

import pytest
import safetensors.torch
import torch

from supir_restore.lora_train.checkpoint import (CheckpointMismatchError, check_checkpoint, check_overwrite,
                                                 read_checkpoint)

SHAPES = {"diffusion_model.a.weight": (torch.Size([8, 2]), torch.Size([2, 6])),
          "diffusion_model.b.weight": (torch.Size([4, 2]), torch.Size([2, 4]))}
SETTINGS = {"rank": 2, "targets": "attention"}


def checkpoint_tensors(step: int = 3) -> dict[str, torch.Tensor]:
    """Tensors as the trainer saves them: adapters, and AdamW state per parameter (up, down of sorted keys)."""
    tensors = {}
    for index, (key, part) in enumerate((k, p) for k in sorted(SHAPES) for p in ("up", "down")):
        shape = SHAPES[key][part == "down"]
        tensors[f"adapter/{key}/{part}"] = torch.randn(shape)
        if step:
            tensors |= {f"optim/{index}/exp_avg": torch.randn(shape), f"optim/{index}/exp_avg_sq": torch.rand(shape),
                        f"optim/{index}/step": torch.tensor(float(step))}
    return tensors


def checkpoint_meta(step: int = 3) -> dict:
    return {"version": 1, "step": step, "losses": [0.5] * step, "settings": dict(SETTINGS),
            "param_groups": [{"lr": 1e-4, "params": [0, 1, 2, 3]}]}


def write(path, tensors, meta) -> str:
    safetensors.torch.save_file(tensors, str(path), metadata={"supir_training": json.dumps(meta)})
    return str(path)


def check(path, steps: int = 10):
    meta, tensors = read_checkpoint(path)
    check_checkpoint(path, meta, tensors, SHAPES, SETTINGS, steps)


def test_a_checkpoint_as_the_trainer_writes_it_passes(tmp_path):
    check(write(tmp_path / "ok.safetensors", checkpoint_tensors(), checkpoint_meta()))
    check(write(tmp_path / "step0.safetensors", checkpoint_tensors(0), checkpoint_meta(0)))
    check(write(tmp_path / "done.safetensors", checkpoint_tensors(), checkpoint_meta()), steps=3)


@pytest.mark.parametrize("change, problem", [
    (lambda t, m: m.update(step="3"), "step '3' is not a count"),
    (lambda t, m: m.update(step=True), "step True is not a count"),
    (lambda t, m: m.update(losses="0.5"), "losses is not a list of numbers"),
    (lambda t, m: m.update(losses=[0.5, None, 0.5]), "losses is not a list of numbers"),
    (lambda t, m: m.update(losses=[0.5]), "1 losses for 3 steps"),
    (lambda t, m: m.update(settings=[]), "settings is not a mapping"),
    (lambda t, m: m.update(param_groups={"params": [0]}), "param_groups is not a list"),
    (lambda t, m: m.update(param_groups=[{"params": [0, 1]}]), "parameter groups of \\[2\\] parameters"),
    (lambda t, m: m.update(settings={**SETTINGS, "rank": 4}), "rank: checkpoint 4, now 2"),
    (lambda t, m: m.update(step=11, losses=[0.5] * 11), "at step 11 but steps is 10; set steps to at least 11"),
    (lambda t, m: t.pop("adapter/diffusion_model.b.weight/up"), "missing 1: adapter/diffusion_model.b.weight/up"),
    (lambda t, m: t.update({"adapter/diffusion_model.c.weight/up": torch.zeros(1)}), "unexpected 1"),
    (lambda t, m: t.update({"adapter/diffusion_model.a.weight/down": torch.zeros(2, 5)}),
     r"wrong shape 1: adapter/diffusion_model.a.weight/down \[2, 5\] \(this run: \[2, 6\]\)"),
    (lambda t, m: t.pop("optim/2/exp_avg_sq"), "missing 1: optim/2/exp_avg_sq"),
    (lambda t, m: t.update({"optim/9/exp_avg": torch.zeros(1)}), "unexpected"),
    (lambda t, m: t["adapter/diffusion_model.a.weight/up"].__setitem__((0, 0), math.nan),
     "1 tensor\\(s\\) hold NaN or infinite values \\(adapter/diffusion_model.a.weight/up\\)"),
    (lambda t, m: t["optim/1/exp_avg_sq"].__setitem__((0, 0), math.inf), "NaN or infinite values \\(optim/1/"),
    (lambda t, m: m.update(version=2), "not a training checkpoint of this trainer"),
])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_naming_the_file(tmp_path, change, problem):
    tensors, meta = checkpoint_tensors(), checkpoint_meta()
    change(tensors, meta)
    path = write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(CheckpointMismatchError, match=problem) as e:
        check(path)
    assert path in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not safetensors at all"])
def test_an_unreadable_checkpoint_is_refused_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match="cannot read the training checkpoint .*damaged") as e:
        check(str(path))
    assert str(path) in str(e.value)


def test_damaged_json_metadata_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "meta.safetensors")
    safetensors.torch.save_file(checkpoint_tensors(), path, metadata={"supir_training": "{not json"})
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        check(path)


def test_a_lora_file_is_written_only_when_free_own_or_overwrite_is_on(tmp_path):
    lora, checkpoint = tmp_path / "loras" / "mine.safetensors", tmp_path / "run" / "checkpoint.safetensors"
    check_overwrite(str(lora), str(checkpoint), overwrite=False)  # free
    lora.parent.mkdir()
    lora.write_bytes(b"someone else's LoRA")
    with pytest.raises(FileExistsError, match=f"{lora} already exists .*switch overwrite on"):
        check_overwrite(str(lora), str(checkpoint), overwrite=False)
    check_overwrite(str(lora), str(checkpoint), overwrite=True)
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"this run's checkpoint")
    check_overwrite(str(lora), str(checkpoint), overwrite=False)  # an earlier run of this name made it
