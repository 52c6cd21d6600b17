"""Tier 1: the one weights-file reader, through every loader that uses it: malicious pickles are refused and never
run, damaged files get their own message, and every message names the file."""
import os
import re

import pytest
import safetensors.torch
import torch

from supir_restore.supir.model.checkpoint import load_supir_weights
from supir_restore.supir.quality import metrics
from supir_restore.supir.weights import (CorruptWeightsError, UnsafeWeightsError, WeightsFileError, check_safetensors,
                                         read_state_dict)

from helpers import ForeignObject, damaged_files, malicious_files, official_state_dict

NEVER_SUGGESTED = ("weights_only=False", "weights_only` set to `False", "trust", "Download it again")


def assert_refused(error, path, marker):
    message = str(error)
    assert isinstance(error, UnsafeWeightsError)
    assert path in message and "code or Python objects" in message and "Do not use this file" in message
    assert not any(s in message for s in NEVER_SUGGESTED), message
    assert not os.path.exists(marker)


def assert_damaged(error, path):
    message = str(error)
    assert isinstance(error, CorruptWeightsError)
    assert path in message and "corrupt or truncated" in message and "check its size" in message


def supir_loader(path):
    return load_supir_weights(path)


def lpips_loader(path):
    """LPIPS reads two pickles; ``path`` is the heads file."""
    alexnet = os.path.join(os.path.dirname(path), "alexnet.pth")
    torch.save({}, alexnet)
    return metrics.LPIPS.from_files(alexnet, path)


def musiq_loader(path):
    return metrics.MUSIQ.from_file(path)


LOADERS = {"SUPIR file": (supir_loader, official_state_dict),
           "LoRA file": (read_state_dict, lambda: {"lora_unet_x.lora_up.weight": torch.zeros(4, 2)}),
           "LPIPS heads": (lpips_loader, lambda: {"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}),
           "MUSIQ weights": (musiq_loader, lambda: {"embedding.weight": torch.zeros(4, 4)})}


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_refuses_code_and_objects_and_never_runs_them(tmp_path, loader):
    load, payload = LOADERS[loader]
    for what, path in malicious_files(str(tmp_path), payload()).items():
        with pytest.raises(WeightsFileError) as err:
            load(path)
        assert_refused(err.value, path, os.path.join(str(tmp_path), "ran"))


def test_the_refusal_names_the_global_whatever_torchs_wording(tmp_path):
    files = malicious_files(str(tmp_path), {})
    blocked, foreign = (str(pytest.raises(UnsafeWeightsError, read_state_dict, files[f"{name}-zip"]).value)
                        for name in ("RunsAShellCommand", "ForeignObject"))
    assert "(it names posix.system)" in blocked
    assert f"(it names {ForeignObject.__module__}.ForeignObject)" in foreign


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_reports_damaged_files_as_such(tmp_path, loader):
    load, payload = LOADERS[loader]
    good = str(tmp_path / "good.pth")
    torch.save(payload(), good)
    for what, path in damaged_files(str(tmp_path), good).items():
        with pytest.raises(WeightsFileError) as err:
            load(path)
        assert_damaged(err.value, path)


def test_a_truncated_safetensors_file_is_damaged(tmp_path):
    good = str(tmp_path / "good.safetensors")
    safetensors.torch.save_file(official_state_dict(), good)
    path = damaged_files(str(tmp_path), good)["truncated"]
    with pytest.raises(CorruptWeightsError) as err:
        load_supir_weights(path)
    assert_damaged(err.value, path)


@pytest.mark.parametrize("kind", ["zip", "legacy", "bare"])
def test_a_pickle_renamed_safetensors_is_refused_as_holding_code_not_as_damaged(tmp_path, kind):
    evil = str(tmp_path / "model.safetensors")
    os.rename(malicious_files(str(tmp_path), {})[f"RunsAShellCommand-{kind}"], evil)
    for load in (read_state_dict, load_supir_weights, check_safetensors):
        with pytest.raises(WeightsFileError) as err:
            load(evil)
        assert_refused(err.value, evil, os.path.join(str(tmp_path), "ran"))


def test_a_pickle_of_tensors_renamed_safetensors_is_named_as_such(tmp_path):
    path = str(tmp_path / "model.safetensors")
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(WeightsFileError, match=rf"^{re.escape(path)}: a torch pickle renamed to \.safetensors, not a "
                                               r"safetensors file\. Use the model's real \.safetensors file"):
        read_state_dict(path)


def test_a_safetensors_file_under_a_pickle_name_is_read_by_its_content(tmp_path):
    path = str(tmp_path / "model.ckpt")
    safetensors.torch.save_file({"w": torch.arange(3.0)}, path)
    assert torch.equal(read_state_dict(path)["w"], torch.arange(3.0))


def test_a_file_that_is_neither_a_pickle_nor_safetensors_is_damaged_not_code(tmp_path):
    """Random bytes under a pickle name used to be refused as holding code."""
    path = str(tmp_path / "model.ckpt")
    with open(path, "wb") as f:
        f.write(b"\x11" + os.urandom(2047))
    with pytest.raises(CorruptWeightsError) as err:
        read_state_dict(path)
    assert_damaged(err.value, path)


def test_the_safetensors_check_finds_a_truncated_file_without_reading_the_tensors(tmp_path):
    good = str(tmp_path / "good.safetensors")
    safetensors.torch.save_file(official_state_dict(), good)
    check_safetensors(good)
    path = damaged_files(str(tmp_path), good)["truncated"]
    with pytest.raises(CorruptWeightsError) as err:
        check_safetensors(path)
    assert_damaged(err.value, path)


def test_a_missing_file_is_named(tmp_path):
    path = str(tmp_path / "nope.ckpt")
    with pytest.raises(WeightsFileError, match=f"{path}: no such file"):
        read_state_dict(path)


def test_wrapped_state_dicts_are_unwrapped_and_non_tensors_dropped(tmp_path):
    path = str(tmp_path / "wrapped.ckpt")
    torch.save({"state_dict": {"w": torch.ones(2), "step": 7}, "global_step": 7}, path)
    assert read_state_dict(path).keys() == {"w"}
    torch.save([torch.ones(2)], path)
    with pytest.raises(WeightsFileError, match=f"{path}: holds a list, not a dict of tensors"):
        read_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float32])
def test_a_safetensors_file_read_at_a_dtype_is_the_stored_tensors_converted(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    stored = {"net.a": torch.randn(3, 5, generator=g), "net.b": torch.randn(7, generator=g).half(),
              "net.c": torch.randn(2, 2, generator=g).bfloat16(), "net.empty": torch.zeros(0, 4),
              "net.steps": torch.arange(4), "kept.d": torch.randn(6, generator=g)}
    path = str(tmp_path / "w.safetensors")
    safetensors.torch.save_file(stored, path)
    read = read_state_dict(path, dtype, converts=lambda key: key.startswith("net."))
    assert read.keys() == stored.keys()
    for key in ("net.a", "net.b", "net.c", "net.empty"):
        assert read[key].dtype == dtype and read[key].shape == stored[key].shape
        # bit for bit what converting the stored tensor gives
        assert torch.equal(read[key].view(torch.uint8), stored[key].to(dtype).view(torch.uint8)), key
    assert read["net.steps"].dtype == torch.int64 and torch.equal(read["net.steps"], stored["net.steps"])
    assert read["kept.d"].dtype == torch.float32 and torch.equal(read["kept.d"], stored["kept.d"])


def test_a_damaged_safetensors_file_read_at_a_dtype_is_named_as_damaged(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"w": torch.randn(64)}, str(path))
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CorruptWeightsError, match="w.safetensors"):
        read_state_dict(str(path), torch.float16)
