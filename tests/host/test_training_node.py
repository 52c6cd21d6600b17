"""Tier 2: SUPIR Train Restoration LoRA refuses, before the first step, what would fail or destroy a file: a LoRA
file it did not make, a name the file system refuses, non-finite images, a checkpoint it cannot resume."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import json  # noqa: E402
import math  # noqa: E402

import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402

from supir_restore.lora_train.checkpoint import CheckpointMismatchError  # noqa: E402
from supir_restore.lora_train.dataset import Sample, build_dataset  # noqa: E402
from supir_restore.lora_train.host.trainer import TrainSettings, train  # noqa: E402
from supir_restore.nodes.training_nodes import SUPIRTrainingDataset, SUPIRTrainLoRA  # noqa: E402
from test_benchmark_nodes import run_node  # noqa: E402

INPUTS = dict(model=None, supir_model=None, vae=None, clip=None, dataset=None, steps=2, rank=2, alpha=2.0,
              targets="attention", learning_rate=1e-3, batch_size=1, grad_accumulation=1, training_dtype="fp32",
              gradient_checkpointing=False, cache_latents=False, degradation="blur_noise", snr_gamma=0.0, seed=0,
              save_every=1, resume=True, validate_every=0, validation_steps=2)


def files_under(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_lora_file_no_run_of_this_name_made_is_never_overwritten(lora_folder):
    (lora_folder / "loras" / "portrait.safetensors").write_bytes(b"a LoRA the user downloaded")
    before = files_under(lora_folder)
    with pytest.raises(FileExistsError, match=r"portrait.safetensors already exists .*switch overwrite on"):
        run_node(SUPIRTrainLoRA, **INPUTS, lora_name="portrait")  # no model: it must stop before using one
    assert files_under(lora_folder) == before


@pytest.mark.parametrize("name, problem", [("", "empty"), ("two\nlines", "control character"),
                                           ("nul\x00", "control character"), ("x" * 250, "too long"),
                                           ("sub/name", "one name, without folders"),
                                           (".hidden", "starts with '.', which hides the file .*remove the leading "
                                                       "dot, e.g. 'hidden'")])
def test_lora_names_the_file_system_refuses_are_errors_before_training(lora_folder, name, problem):
    with pytest.raises(ValueError, match=f"^lora_name.*{problem}"):
        run_node(SUPIRTrainLoRA, **INPUTS, lora_name=name)
    assert files_under(lora_folder) == {}


def test_non_finite_images_are_errors_naming_the_input(lora_folder):
    bad = torch.rand(1, 64, 64, 3)
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="^validation_images contains 1 NaN"):
        run_node(SUPIRTrainLoRA, **INPUTS, lora_name="fresh", validation_images=bad)
    with pytest.raises(ValueError, match="^images contains 1 NaN"):
        run_node(SUPIRTrainingDataset, folder="", resolution=64, aspect_buckets=False, default_caption="x",
                 images=bad)
    assert files_under(lora_folder) == {}


@pytest.fixture(scope="module")
def dataset():
    g = torch.Generator().manual_seed(0)
    return build_dataset([Sample(torch.rand(72, 80, 3, generator=g), "a photo", "noise")], 64)


def settings(steps: int) -> TrainSettings:
    return TrainSettings(steps=steps, rank=2, alpha=2.0, learning_rate=1e-3, degradation="blur_noise", save_every=0)


def rewrite(path, change) -> None:
    with safetensors.safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["supir_training"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    safetensors.torch.save_file(tensors, path, metadata={"supir_training": json.dumps(meta)})


@pytest.mark.parametrize("steps, change, problem", [
    (1, lambda t, m: None, "at step 2 but steps is 1"),
    (3, lambda t, m: next(v for k, v in t.items() if k.startswith("adapter/")).fill_(math.inf), "NaN or infinite"),
    (3, lambda t, m: m.update(losses="low"), "losses is not a list of numbers"),
])
def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_the_first_step(
        tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, tmp_path, steps, change, problem):
    path = str(tmp_path / "checkpoint.safetensors")
    train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(2), path)
    rewrite(path, change)
    before = open(path, "rb").read()
    taken = []
    with pytest.raises(CheckpointMismatchError, match=problem) as e:
        train(tiny_model, tiny_supir, tiny_vae, tiny_clip, dataset, settings(steps), path,
              on_step=lambda step, loss: taken.append(step))
    assert path in str(e.value) and taken == []
    assert open(path, "rb").read() == before
