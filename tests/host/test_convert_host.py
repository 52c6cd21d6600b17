"""Tier 2: converted files load through the pack's loaders to the same tensors as their sources (bit-exact at the
same storage dtype), and SUPIR Convert Weights File writes only new files in the pack's model folders."""
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from host_helpers import run_node  # noqa: E402
from stablesr_helpers import cfw_state_dict, stablesr_file  # noqa: E402
from supir_restore.nodes.convert_nodes import SUPIRConvertWeights, source_options  # noqa: E402
from supir_restore.nodes.folders import register_model_folder  # noqa: E402
from supir_restore.supir.convert import convert_file  # noqa: E402
from supir_restore.supir.host.cfw_decode import load_cfw  # noqa: E402
from supir_restore.supir.host.stablesr import load_stablesr  # noqa: E402
from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from tiny_models import tiny_sd21_clip  # noqa: E402


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key].view(torch.uint8), b[key].view(torch.uint8)), key


@pytest.mark.parametrize("weight_dtype, file_dtype", [("fp16", "fp16"), ("fp32", "keep"), ("fp8_e4m3fn", "fp8_e4m3fn")])
def test_a_converted_supir_file_loads_to_the_same_network(tmp_path, tiny_supir_file, weight_dtype, file_dtype):
    converted = str(tmp_path / "supir.safetensors")
    convert_file(tiny_supir_file, converted, file_dtype)
    source, new = load_supir(tiny_supir_file, weight_dtype), load_supir(converted, weight_dtype)
    assert_same_tensors(source.control.state_dict(), new.control.state_dict())
    if file_dtype == "keep":
        assert_same_tensors(source.denoise_encoder, new.denoise_encoder)
    else:  # the denoise encoder's tensors are kept as the file stores them (the LQ VAE casts them to its own)
        dtype = new.denoise_encoder["conv_in.weight"].dtype
        assert dtype == {"fp16": torch.float16, "fp8_e4m3fn": torch.float8_e4m3fn}[file_dtype]
        assert_same_tensors({k: v.to(dtype) for k, v in source.denoise_encoder.items()}, new.denoise_encoder)


@pytest.mark.parametrize("weight_dtype", ["fp32", "bf16", "fp8_e4m3fn"])
def test_a_safetensors_file_loaded_at_another_dtype_is_its_tensors_converted(tmp_path, tiny_supir_file, tiny_vae,
                                                                             weight_dtype):
    # converted while read from disk rather than memory-mapped (supir/weights.py): the same values as converting
    # the stored tensors, only the denoise encoder kept as stored
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[weight_dtype]
    supir_file = str(tmp_path / "supir.safetensors")
    convert_file(tiny_supir_file, supir_file, "fp16")
    stored, loaded = load_supir(supir_file, "fp16"), load_supir(supir_file, weight_dtype)
    assert_same_tensors({k: v.to(dtype) for k, v in stored.control.state_dict().items()},
                        loaded.control.state_dict())
    assert_same_tensors(stored.denoise_encoder, loaded.denoise_encoder)
    sr_file = str(tmp_path / "sr.safetensors")
    convert_file(stablesr_file(tmp_path / "stablesr_000117.ckpt", vae=tiny_vae, clip=tiny_sd21_clip(seed=2)), sr_file,
                 "fp16")
    assert_same_tensors({k: v.to(dtype) for k, v in load_stablesr(sr_file, "fp16").net.state_dict().items()},
                        load_stablesr(sr_file, weight_dtype).net.state_dict())


def test_a_converted_stablesr_checkpoint_loads_to_the_same_network_without_its_sd_parts(tmp_path, tiny_vae):
    source = stablesr_file(tmp_path / "stablesr_000117.ckpt", vae=tiny_vae, clip=tiny_sd21_clip(seed=2))
    found, size = convert_file(source, str(tmp_path / "sr.safetensors"), "fp16")
    assert not any(k.startswith(("first_stage_model.", "cond_stage_model.")) for k in found.tensors)
    assert size < os.path.getsize(source) / 2  # the tiny UNet, VAE and CLIP are left out
    assert_same_tensors(load_stablesr(source, "fp16").net.state_dict(),
                        load_stablesr(str(tmp_path / "sr.safetensors"), "fp16").net.state_dict())


def test_a_converted_cfw_file_loads_to_the_same_fusion_layers_and_vae(tmp_path, tiny_vae):
    torch.save({"state_dict": cfw_state_dict(tiny_vae)}, tmp_path / "vqgan_cfw_00011.ckpt")
    convert_file(str(tmp_path / "vqgan_cfw_00011.ckpt"), str(tmp_path / "cfw.safetensors"), "keep")
    source, new = load_cfw(str(tmp_path / "vqgan_cfw_00011.ckpt")), load_cfw(str(tmp_path / "cfw.safetensors"))
    assert_same_tensors(source.layers.state_dict(), new.layers.state_dict())
    assert_same_tensors(source.vae_weights, new.vae_weights)


def test_the_node_writes_a_new_file_in_the_packs_folder_and_never_overwrites(comfy_dirs, tiny_supir_file):
    register_model_folder()
    supir_folder = comfy_dirs / "models" / "supir"
    (supir_folder / "SUPIR-v0Q.ckpt").symlink_to(tiny_supir_file)
    assert "supir/SUPIR-v0Q.ckpt" in source_options()
    report = run_node(SUPIRConvertWeights, source="supir/SUPIR-v0Q.ckpt", dtype="fp16", new_name="").result[0]
    assert f"wrote {supir_folder / 'SUPIR-v0Q_fp16.safetensors'}: SUPIR" in report and "SUPIR Load Model" in report
    load_supir(str(supir_folder / "SUPIR-v0Q_fp16.safetensors"), "fp16")  # raises on anything missing
    written = (supir_folder / "SUPIR-v0Q_fp16.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="SUPIR-v0Q_fp16.safetensors exists and is never overwritten"):
        run_node(SUPIRConvertWeights, source="supir/SUPIR-v0Q.ckpt", dtype="bf16", new_name="SUPIR-v0Q_fp16")
    assert (supir_folder / "SUPIR-v0Q_fp16.safetensors").read_bytes() == written
    for bad in ("../escape", "a\0b", "x" * 300):
        with pytest.raises(ValueError, match="new_name"):
            run_node(SUPIRConvertWeights, source="supir/SUPIR-v0Q.ckpt", dtype="fp16", new_name=bad)
    assert sorted(os.listdir(supir_folder)) == ["SUPIR-v0Q.ckpt", "SUPIR-v0Q_fp16.safetensors"]
    assert not any(name.endswith(".safetensors") for name in os.listdir(comfy_dirs / "models"))
