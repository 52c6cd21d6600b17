"""Tier 1: rewriting SUPIR, StableSR and CFW files as new safetensors files with only the tensors the pack reads:
the layout written, each tensor equal to the source's cast to the chosen dtype, and that nothing is overwritten."""
import json
import os

import pytest
import safetensors
import safetensors.torch
import torch

from helpers import official_state_dict, seeded
from supir_restore.supir.convert import convert_file, default_name, main, pack_tensors
from supir_restore.supir.stablesr.cfw import CFWLayers
from supir_restore.supir.stablesr.checkpoint import SPADELayers, StableSRCheckpointError, sd_resblock_widths
from supir_restore.supir.stablesr.encoder import EncoderConfig, TimeAwareEncoder
from supir_restore.supir.weights import WeightsFileError, write_new_safetensors

SD_PARTS = {  # what a StableSR checkpoint holds besides its SR tensors: the stock SD 2.1 UNet, VAE and CLIP
    "model.diffusion_model.input_blocks.0.0.weight": torch.ones(32, 4, 3, 3),
    "first_stage_model.decoder.conv_out.weight": torch.ones(3, 32, 3, 3),
    "cond_stage_model.model.ln_final.weight": torch.ones(64),
}


def seeded_module(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(seeded(p.shape, seed * 1000 + i))
    return module


def stablesr_sr_tensors(seed=0) -> dict:
    """The SR tensors of a StableSR file for a 32-channel SD 2.x UNet, under the official names."""
    spade = seeded_module(SPADELayers(sd_resblock_widths(32, (1, 2, 4), 2), 64, hidden=32), seed)
    encoder = seeded_module(TimeAwareEncoder(EncoderConfig(model_channels=32, feature_channels=64)), seed + 1)
    return {**{f"model.diffusion_model.{k}": v for k, v in spade.state_dict().items()},
            **{f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()}}


def cfw_fusion_tensors(seed=0) -> dict:
    layers = seeded_module(CFWLayers({1: 64, 2: 64}, growth=8), seed)
    return {f"decoder.{k}": v for k, v in layers.state_dict().items()}


def read(path) -> tuple[dict, dict]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def assert_bit_equal(written: dict, expected: dict, dtype: torch.dtype) -> None:
    assert set(written) == set(expected)
    for key, value in expected.items():
        cast = value.to(dtype) if value.is_floating_point() else value
        assert written[key].dtype == cast.dtype and written[key].shape == cast.shape, key
        assert torch.equal(written[key].view(torch.uint8), cast.contiguous().view(torch.uint8)), key


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp8_e4m3fn", "fp32"])
def test_a_supir_ckpt_becomes_its_official_tensors_in_the_chosen_dtype(tmp_path, dtype):
    source = official_state_dict(seed=1)
    torch.save({"state_dict": source, "global_step": 5}, tmp_path / "SUPIR-v0Q.ckpt")
    found, size = convert_file(str(tmp_path / "SUPIR-v0Q.ckpt"), str(tmp_path / "out.safetensors"), dtype)
    written, metadata = read(tmp_path / "out.safetensors")
    expected = {k: v for k, v in source.items() if not k.endswith("mask_LQ")}  # no module reads mask_LQ
    assert found.kind == "SUPIR" and size == os.path.getsize(tmp_path / "out.safetensors")
    assert_bit_equal(written, expected, {"fp16": torch.float16, "bf16": torch.bfloat16,
                                         "fp8_e4m3fn": torch.float8_e4m3fn, "fp32": torch.float32}[dtype])
    assert metadata == {"format": "pt", "contents": "SUPIR", "converted_from": "SUPIR-v0Q.ckpt",
                        "storage_dtype": dtype}


def test_prefix_less_supir_keys_are_written_under_the_official_names(tmp_path):
    official = official_state_dict(seed=2, mask=False)
    pruned = {k.removeprefix("model.").removeprefix("diffusion_model."): v.half() for k, v in official.items()}
    safetensors.torch.save_file(pruned, str(tmp_path / "pruned.safetensors"))
    convert_file(str(tmp_path / "pruned.safetensors"), str(tmp_path / "out.safetensors"), "keep")
    assert_bit_equal(read(tmp_path / "out.safetensors")[0], official, torch.float16)


def test_a_stablesr_checkpoint_keeps_only_its_sr_tensors(tmp_path):
    sr = stablesr_sr_tensors()
    torch.save({"state_dict": {**SD_PARTS, **sr}}, tmp_path / "stablesr_000117.ckpt")
    found, _ = convert_file(str(tmp_path / "stablesr_000117.ckpt"), str(tmp_path / "sr.safetensors"), "fp16")
    assert found.kind == "StableSR"
    assert_bit_equal(read(tmp_path / "sr.safetensors")[0], sr, torch.float16)


def test_a_cfw_file_keeps_its_vae_and_fusion_layers_without_the_training_loss(tmp_path):
    vae_part = {"post_quant_conv.weight": seeded((4, 4, 1, 1), 3), "post_quant_conv.bias": seeded((4,), 4)}
    cfw = {**cfw_fusion_tensors(), **vae_part}
    with pytest.raises(StableSRCheckpointError, match="vqgan_cfw_00011.ckpt: the VAE part is incomplete"):  # a partial VAE is refused, as on load
        pack_tensors({**cfw, "loss.logvar": torch.zeros(())}, "vqgan_cfw_00011.ckpt")
    fusion = cfw_fusion_tensors()
    torch.save({"state_dict": {**fusion, "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight":
                               torch.ones(64, 3, 4, 4)}}, tmp_path / "vqgan_cfw_00011.ckpt")
    found, _ = convert_file(str(tmp_path / "vqgan_cfw_00011.ckpt"), str(tmp_path / "cfw.safetensors"), "keep")
    assert found.kind == "CFW"
    assert_bit_equal(read(tmp_path / "cfw.safetensors")[0], fusion, torch.float32)


def test_an_existing_file_is_never_overwritten_and_is_refused_before_the_source_is_read(tmp_path):
    (tmp_path / "mine.safetensors").write_bytes(b"the user's file")
    (tmp_path / "not_weights.ckpt").write_bytes(b"garbage")
    with pytest.raises(FileExistsError, match="mine.safetensors: a file of that name exists"):
        convert_file(str(tmp_path / "not_weights.ckpt"), str(tmp_path / "mine.safetensors"))
    assert (tmp_path / "mine.safetensors").read_bytes() == b"the user's file"
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_new_safetensors(str(tmp_path / "mine.safetensors"), {"a": torch.zeros(1)})
    assert (tmp_path / "mine.safetensors").read_bytes() == b"the user's file"


@pytest.mark.parametrize("sd, message", [
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "not a SUPIR, StableSR or CFW file"),
    ({"lora_unet_down.lora_down.weight": torch.zeros(1)}, "not a SUPIR, StableSR or CFW file"),
])
def test_other_files_are_refused_by_name_and_nothing_is_written(tmp_path, sd, message):
    torch.save(sd, tmp_path / "other.ckpt")
    with pytest.raises(WeightsFileError, match=f"other.ckpt: {message}"):
        convert_file(str(tmp_path / "other.ckpt"), str(tmp_path / "out.safetensors"))
    assert sorted(os.listdir(tmp_path)) == ["other.ckpt"]


def test_a_damaged_file_is_refused_and_leaves_no_partial_file(tmp_path):
    sd = official_state_dict(seed=3)
    sd["model.control_model.input_blocks.1.0.in_layers.2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "damaged.ckpt")
    with pytest.raises(WeightsFileError, match="damaged.ckpt: 1 tensor\\(s\\) hold NaN"):
        convert_file(str(tmp_path / "damaged.ckpt"), str(tmp_path / "out.safetensors"))
    assert sorted(os.listdir(tmp_path)) == ["damaged.ckpt"]


def test_the_writer_stores_every_dtype_the_safetensors_reader_knows(tmp_path):
    tensors = {"f32": seeded((3, 5), 1), "bf16": seeded((2, 7), 2).bfloat16(), "i64": torch.arange(6).view(2, 3),
               "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
               "strided": seeded((4, 6), 3).t()}
    size = write_new_safetensors(str(tmp_path / "t.safetensors"), tensors, metadata={"k": "v"})
    written = safetensors.torch.load_file(str(tmp_path / "t.safetensors"))
    assert size == os.path.getsize(tmp_path / "t.safetensors")
    assert set(written) == set(tensors) and all(torch.equal(written[k], v) for k, v in tensors.items())
    header_size = int.from_bytes((tmp_path / "t.safetensors").read_bytes()[:8], "little")
    assert header_size % 8 == 0  # tensor data 8-byte aligned, as safetensors' own writer leaves it
    assert json.loads((tmp_path / "t.safetensors").read_bytes()[8:8 + header_size])["__metadata__"] == {"k": "v"}


def test_the_command_names_the_new_file_and_refuses_an_existing_one_in_one_line(tmp_path, capsys):
    torch.save(official_state_dict(seed=4), tmp_path / "SUPIR-v0F.ckpt")
    assert main([str(tmp_path / "SUPIR-v0F.ckpt"), "--dtype", "bf16"]) == 0
    assert default_name("SUPIR-v0F.ckpt", "bf16") == "SUPIR-v0F_bf16.safetensors"
    assert "SUPIR-v0F_bf16.safetensors: SUPIR, 398 tensors" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "SUPIR-v0F_bf16.safetensors")
    assert main([str(tmp_path / "SUPIR-v0F.ckpt"), "--dtype", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never overwritten" in err
    assert main([str(tmp_path / "SUPIR-v0F.ckpt"), str(tmp_path / "out.ckpt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
