"""Tier 1: reading SUPIR files in every published format, and refusing bad ones with a clear message."""
import pytest
import safetensors.torch
import torch

from supir_restore.supir.model.checkpoint import SUPIRCheckpointError, load_supir_weights
from supir_restore.supir.weights import WeightsFileError

from helpers import official_state_dict, tiny_control, tiny_encoder_sd


def expected_groups(seed=0):
    return tiny_control(seed).state_dict(), tiny_encoder_sd(seed)


def assert_loaded(path, dtype=torch.float32, seed=0):
    weights, net = load_supir_weights(str(path))
    control, encoder = expected_groups(seed)
    assert weights.control.keys() == control.keys() and weights.denoise_encoder.keys() == encoder.keys()
    for k, v in control.items():
        assert weights.control[k].dtype == dtype
        torch.testing.assert_close(weights.control[k].float(), v.to(dtype).float(), rtol=0, atol=0)  # stored as is
    assert net.adaptor_specs == tiny_control().adaptor_specs


@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("zipfile", [True, False])
def test_official_ckpt_pickles(tmp_path, wrapped, zipfile):
    sd = official_state_dict()
    path = tmp_path / "SUPIR-v0Q.ckpt"
    torch.save({"state_dict": sd, "global_step": 1} if wrapped else sd, path,
               _use_new_zipfile_serialization=zipfile)
    assert_loaded(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_safetensors(tmp_path, dtype):
    path = tmp_path / "SUPIR-v0F.safetensors"
    safetensors.torch.save_file({k: v.to(dtype) for k, v in official_state_dict(mask=False).items()}, str(path))
    assert_loaded(path, dtype)


@pytest.mark.parametrize("style", ["comfy_core", "bare_trunk"])
def test_prefix_less_keys(tmp_path, style):
    sd = {}
    for k, v in official_state_dict().items():
        k = k.replace("model.diffusion_model.project_modules.", "project_modules.")
        k = k.replace("first_stage_model.denoise_encoder.", "denoise_encoder.")
        k = k.replace("model.control_model.", "control_model." if style == "comfy_core" else "")
        sd[k] = v
    path = tmp_path / "supir.safetensors"
    safetensors.torch.save_file(sd, str(path))
    assert_loaded(path)


def test_mask_lq_is_dropped_but_other_unknown_keys_are_named(tmp_path):
    sd = official_state_dict(mask=True)
    sd["model.control_model.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(WeightsFileError, match=r"unexpected 1: control_model\.extra_head\.weight"):
        load_supir_weights(str(path))
    sd["vae.stray"] = torch.zeros(1)
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(SUPIRCheckpointError, match=r"not part of SUPIR: vae\.stray"):
        load_supir_weights(str(path))


@pytest.mark.parametrize("key,group", [
    ("model.control_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", "control network"),
    ("model.diffusion_model.project_modules.7.attn.to_v.weight", "control network"),
    ("first_stage_model.denoise_encoder.mid.attn_1.q.weight", "denoise encoder"),
])
def test_missing_tensor_is_named(tmp_path, key, group):
    sd = official_state_dict()
    del sd[key]
    path = tmp_path / "missing.safetensors"
    safetensors.torch.save_file(sd, str(path))
    short = key.split("model.", 1)[-1].replace("diffusion_", "").replace("first_stage_denoise_encoder.", "")
    with pytest.raises(WeightsFileError, match=f"{group}.*missing 1: .*{short.split('.')[-2]}"):
        load_supir_weights(str(path))


def test_wrong_shape_is_named(tmp_path):
    sd = official_state_dict()
    sd["model.diffusion_model.project_modules.0.zero_mul.bias"] = torch.zeros(7)
    path = tmp_path / "shape.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(WeightsFileError, match=r"wrong shape 1: project_modules\.0\.zero_mul\.bias \[7\]"):
        load_supir_weights(str(path))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tmp_path, bad):
    sd = {k: v.half() for k, v in official_state_dict().items()}
    key = next(k for k in sd if k.startswith("first_stage_model.denoise_encoder.") and k.endswith("weight"))
    sd[key].view(-1)[0] = bad
    path = tmp_path / "diverged.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(SUPIRCheckpointError, match=rf"^diverged.safetensors: 1 tensor\(s\) hold NaN or infinite "
                                                   rf"values \(denoise_encoder\.{key.rsplit('encoder.', 1)[1]}\)"):
        load_supir_weights(str(path))


def test_missing_denoise_encoder(tmp_path):
    sd = {k: v for k, v in official_state_dict().items() if "denoise_encoder" not in k}
    path = tmp_path / "no_encoder.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(SUPIRCheckpointError, match="denoise encoder .* is missing"):
        load_supir_weights(str(path))


@pytest.mark.parametrize("keys,message", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "Stable Diffusion UNet/checkpoint, not a SUPIR"),
    ({"lora_unet_input_blocks_1_1_proj_in.lora_up.weight": (4, 4)}, "this is a LoRA"),
    ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, "this is a VAE"),
    ({"something.else": (1,)}, r"not a SUPIR file: no control_model tensors among 1 \(first: something\.else\)"),
])
def test_wrong_model_files(tmp_path, keys, message):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    with pytest.raises(SUPIRCheckpointError, match=message + ".*models/supir"):
        load_supir_weights(str(path))
