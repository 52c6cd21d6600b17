"""Tier 1: the checks made before work starts: output names the file system takes, finite tensors."""
import math
import re

import pytest
import torch

from supir_restore.supir.checks import (check_file_name, check_filename_prefix, check_finite_image,
                                        check_finite_latent, non_finite_tensors)


@pytest.mark.parametrize("name, problem", [
    ("", "empty"), ("   ", "empty"), ("a\x00b", "control character"), ("two\nlines", "control character"),
    ("tab\there", "control character"), ("bell\x07", "control character"), ("..", "not a file name"),
    ("x" * 250, "too long"), ("é" * 120, "too long"), ("sub/name", "one name, without folders"),
    ("..\\up", "one name, without folders"),
])
def test_file_names_the_file_system_refuses_are_named_with_the_input(name, problem):
    with pytest.raises(ValueError, match=problem) as e:
        check_file_name(name, "lora_name", ".safetensors.partial")
    assert str(e.value).startswith("lora_name")


def test_a_name_is_long_enough_up_to_the_file_systems_limit_with_its_suffix():
    check_file_name("x" * (255 - len(".safetensors")), "lora_name", ".safetensors")
    with pytest.raises(ValueError, match="at most 243 bytes"):
        check_file_name("x" * 244, "lora_name", ".safetensors")
    check_file_name("a photo's restoration (v2) – 日本", "lora_name")


@pytest.mark.parametrize("prefix, problem", [
    ("", "empty"), ("loras/", "ends with a folder separator"), ("/tmp/x", "inside ComfyUI's output folder"),
    ("../x", "inside ComfyUI's output folder"), ("a/../../x", "inside ComfyUI's output folder"),
    ("reports\n/x", "control character"), ("ok/na\x00me", "control character"), ("ok/" + "y" * 250, "too long"),
    ("z" * 256 + "/name", "too long"),
])
def test_filename_prefixes_are_checked_folder_by_folder(prefix, problem):
    with pytest.raises(ValueError, match=problem) as e:
        check_filename_prefix(prefix, "filename_prefix", "_00001_.safetensors")
    assert "filename_prefix" in str(e.value)


def test_ordinary_filename_prefixes_pass():
    for prefix in ("loras/supir_merged", "supir_benchmark/report", "name", "a/b/c/d"):
        check_filename_prefix(prefix, "filename_prefix", "_00001_.safetensors")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_images_and_latents_are_errors_naming_the_input(bad):
    image = torch.rand(1, 8, 8, 3)
    image[0, 3, 4, 1] = bad
    with pytest.raises(ValueError, match=r"^image contains 1 NaN or infinite value \(of 192\).*fp32"):
        check_finite_image(image, "image")
    latent = torch.zeros(1, 4, 2, 2)
    latent[..., 0] = bad
    with pytest.raises(ValueError, match="^hint contains 8 NaN or infinite values"):
        check_finite_latent(latent, "hint")
    check_finite_image(torch.rand(1, 8, 8, 3), "image")


def test_non_finite_tensors_are_listed_by_name_and_integers_are_ignored():
    tensors = {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan], dtype=torch.float16),
               "c": torch.arange(3), "d": torch.tensor([math.inf], dtype=torch.bfloat16),
               "fp8": torch.tensor([0.5, 448.0], dtype=torch.float8_e4m3fn),
               "fp8_nan": torch.tensor([0.5, math.nan], dtype=torch.float8_e4m3fn),
               "fp8_inf": torch.tensor([math.inf], dtype=torch.float8_e5m2)}
    assert non_finite_tensors(tensors) == ["b", "d", "fp8_nan", "fp8_inf"]


@pytest.mark.parametrize("shape", [(0, 8, 8, 3), (1, 0, 8, 3), (1, 8, 0, 3)])
def test_an_empty_image_is_an_error_naming_the_input(shape):
    with pytest.raises(ValueError, match=re.escape(f"lr_image is empty (shape {list(shape)}: no image, or a side of "
                                                   "0 px)")):
        check_finite_image(torch.zeros(shape), "lr_image")
