"""Tier 1: the semantic prior's parts that need no model: checking a local vision-language model folder, and the
image crops of the tiled aggregation's tiles that per-tile captions describe."""
import json
import re

import pytest
import safetensors.torch
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from supir_restore.supir.caption.folder import FAMILIES, VLMFolderError, inspect_vlm_folder
from supir_restore.supir.caption.tiles import tile_crops
from supir_restore.supir.tiling.grid import tile_grid


def model_folder(root, config: dict | None, files=("model.safetensors", "tokenizer_config.json")):
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "config.json").write_text(json.dumps(config))
    for name in files:
        if name.endswith(".safetensors"):
            safetensors.torch.save_file({"w": torch.zeros(4)}, str(root / name))
        else:
            (root / name).write_text("{}" if name.endswith(".json") else "")
    return str(root)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_supported_family_is_transformers_own_image_text_to_text_class(tmp_path, model_type):
    folder = inspect_vlm_folder(model_folder(tmp_path / model_type, {"model_type": model_type}))
    assert folder.model_type == model_type
    assert MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type] == folder.model_class


def test_folders_that_cannot_load_are_named_with_the_fix(tmp_path):
    with pytest.raises(VLMFolderError, match="no such folder"):
        inspect_vlm_folder(str(tmp_path / "missing"))
    with pytest.raises(VLMFolderError, match="config.json is missing"):
        inspect_vlm_folder(model_folder(tmp_path / "no_config", None))
    with pytest.raises(VLMFolderError, match="'llava_onevision_custom' .* own code \\(auto_map\\), which this pack "
                                             "never runs"):
        inspect_vlm_folder(model_folder(tmp_path / "remote", {"model_type": "llava_onevision_custom",
                                                               "auto_map": {"AutoModel": "modeling.Model"}}))
    with pytest.raises(VLMFolderError, match="florence_code: this florence2 folder is written for the model's own "
                                             "code \\(auto_map\\).* florence-community/Florence-2-base"):
        inspect_vlm_folder(model_folder(tmp_path / "florence_code", {"model_type": "florence2",
                                                                      "auto_map": {"AutoConfig": "config.Config"}}))
    with pytest.raises(VLMFolderError, match="no .safetensors weights \\(found pytorch_model.bin"):
        inspect_vlm_folder(model_folder(tmp_path / "pickled", {"model_type": "llava"},
                                        ("pytorch_model.bin", "tokenizer_config.json")))
    with pytest.raises(VLMFolderError, match="no tokenizer files"):
        inspect_vlm_folder(model_folder(tmp_path / "no_tokenizer", {"model_type": "qwen2_vl"},
                                        ("model.safetensors",)))
    broken = model_folder(tmp_path / "broken", None)
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(VLMFolderError, match="config.json: cannot be read"):
        inspect_vlm_folder(broken)


def test_a_truncated_weights_file_is_named_with_its_folder_before_transformers_reads_it(tmp_path):
    folder = model_folder(tmp_path / "short", {"model_type": "llava"},
                          ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                           "tokenizer_config.json"))
    shard = tmp_path / "short" / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(VLMFolderError, match=f"^{re.escape(str(shard))}: cannot be read, the file is corrupt or "
                                             rf"truncated.*Download it again and check its size\. \(in the model "
                                             rf"folder {re.escape(folder)}\)$"):
        inspect_vlm_folder(folder)


@pytest.mark.parametrize("file", ["processor_config.json", "preprocessor_config.json", "tokenizer_config.json"])
def test_an_auto_map_in_any_processor_file_is_refused_naming_the_folder_and_the_file(tmp_path, file):
    folder = model_folder(tmp_path / "remote_processor", {"model_type": "llava"})
    (tmp_path / "remote_processor" / file).write_text(json.dumps({"auto_map": {"AutoProcessor": "proc.Processor"}}))
    with pytest.raises(VLMFolderError, match=f"^{re.escape(folder)}: {file} names the model's own code \\(auto_map: "
                                             "AutoProcessor\\), which this pack never runs. .*delete the auto_map "
                                             f"entry from {file}"):
        inspect_vlm_folder(folder)


@pytest.mark.parametrize("grid", ["snapped", "even"])
def test_tile_crops_are_the_aggregation_tiles_at_image_scale(grid):
    image = torch.rand(2, 200, 328, 3)
    crops = tile_crops(image, tile=16, stride=8, grid=grid)
    tiles = tile_grid(25, 41, 16, 8, grid)
    assert len(crops) == len(tiles)
    for crop, (t, b, l, r) in zip(crops, tiles):
        assert torch.equal(crop, image[:, 8 * t:8 * b, 8 * l:8 * r]) and crop.shape[1:3] == (128, 128)


def test_tile_crops_follow_the_hint_latent_of_any_vae_scale():
    image = torch.rand(1, 96, 128, 3)
    crops = tile_crops(image, tile=8, stride=4, latent_size=(24, 32))  # a VAE of 4 px per latent pixel
    tiles = tile_grid(24, 32, 8, 4)
    assert len(crops) == len(tiles) == 35
    for crop, (t, b, l, r) in zip(crops, tiles):
        assert torch.equal(crop, image[:, 4 * t:4 * b, 4 * l:4 * r])
    for size, latent in (((1, 60, 64, 3), None), ((1, 96, 128, 3), (24, 30)), ((1, 96, 128, 3), (12, 32))):
        with pytest.raises(ValueError, match="is not a whole multiple of the latent the aggregation tiles"):
            tile_crops(torch.rand(size), tile=4, stride=2, latent_size=latent)
