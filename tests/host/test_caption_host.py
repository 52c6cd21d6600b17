"""Tier 2: the caption nodes in ComfyUI (in-process): the model folders, the model under ComfyUI's model
management, progress per image or tile, and per-tile captions in the aggregation's tile order."""
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

from caption_models import write_tiny_vlm  # noqa: E402
from supir_restore.nodes.caption_nodes import SUPIRCaptionVLM, SUPIRLoadVLM  # noqa: E402
from supir_restore.nodes.folders import register_model_folder, vlm_folders  # noqa: E402
from supir_restore.supir.caption.model import caption_image, steer  # noqa: E402
from supir_restore.supir.caption.tiles import tile_crops  # noqa: E402
from supir_restore.supir.host.caption import load_managed_vlm, vlm_dtype  # noqa: E402

INSTRUCTION = "describe the photo ."


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return write_tiny_vlm("llava", tmp_path_factory.mktemp("vlm") / "tiny_llava", seed=1)


@pytest.fixture()
def models_dir(comfy_dirs, monkeypatch):
    monkeypatch.delitem(folder_paths.folder_names_and_paths, "vlm", raising=False)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "supir",
                        folder_paths.folder_names_and_paths.get("supir", ([], set())))
    register_model_folder()
    return comfy_dirs / "models"


def recorded_progress(monkeypatch) -> list[tuple[int, int]]:
    """The (done, total) updates of every ComfyUI progress bar made from now on (ComfyUI 0.12 throttles what it
    sends on, so the bar's own calls are recorded)."""
    progress = []

    class Recorded(comfy.utils.ProgressBar):
        def update_absolute(self, value, total=None, preview=None):
            progress.append((value, total))
            super().update_absolute(value, total, preview)
    monkeypatch.setattr(comfy.utils, "ProgressBar", Recorded)
    return progress


def caption_node(vlm, image, tile_size=0, tile_stride=8, decoding="greedy", seed=0, prefix="", suffix="", hint=None):
    return SUPIRCaptionVLM.execute(vlm, image, INSTRUCTION, 5, decoding, seed, prefix, suffix, tile_size,
                                   tile_stride, "snapped", hint).result


def test_model_folders_of_models_vlm_and_models_llm_are_listed(models_dir, tiny_llava):
    assert os.path.isdir(models_dir / "vlm")
    for root, name in (("vlm", "first"), ("LLM", "second"), ("LLM", "first")):
        os.makedirs(models_dir / root / name, exist_ok=True)
        (models_dir / root / name / "config.json").write_text("{}")
    os.makedirs(models_dir / "LLM" / "not_a_model")
    assert vlm_folders() == {"first": str(models_dir / "vlm" / "first"), "second": str(models_dir / "LLM" / "second")}
    with pytest.raises(ValueError, match="'missing' not found: put the model's folder .* in ComfyUI/models/vlm"):
        SUPIRLoadVLM.execute("missing", "auto")


def test_the_model_loads_under_model_management_in_the_device_dtype(tiny_llava):
    managed = load_managed_vlm(tiny_llava)
    assert isinstance(managed.patcher, comfy.model_patcher.ModelPatcher)
    assert managed.patcher.model.vlm is managed.vlm.model
    assert managed.patcher.load_device == mm.get_torch_device()
    assert managed.vlm.model.dtype == vlm_dtype(mm.get_torch_device()) == torch.float32  # the CPU: fp32
    assert load_managed_vlm(tiny_llava, "bf16").vlm.model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="weight_dtype 'fp8' is not one of auto, fp32, fp16, bf16"):
        vlm_dtype(mm.get_torch_device(), "fp8")


def test_one_caption_line_per_image_with_progress(tiny_llava, monkeypatch):
    managed = load_managed_vlm(tiny_llava)
    images = torch.rand(3, 32, 40, 3, generator=torch.Generator().manual_seed(0))
    progress = recorded_progress(monkeypatch)
    text, lines = caption_node(managed, images, prefix="photo:", suffix="sharp")
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert text.split("\n") == lines and len(lines) == 3
    assert lines == [steer(caption_image(managed.vlm, image, INSTRUCTION, 5), "photo:", "sharp") for image in images]
    sampled = caption_node(managed, images[:1], decoding="sample", seed=4)[1]
    assert sampled == caption_node(managed, images[:1], decoding="sample", seed=4)[1]


def test_per_tile_captions_describe_the_aggregation_tiles_in_order(tiny_llava, monkeypatch):
    managed = load_managed_vlm(tiny_llava)
    image = torch.rand(1, 96, 144, 3, generator=torch.Generator().manual_seed(1))
    progress = recorded_progress(monkeypatch)
    text, lines = caption_node(managed, image, tile_size=64, tile_stride=48)
    crops = tile_crops(image, 8, 6)
    assert len(crops) == 6 and progress == [(i, 6) for i in range(1, 7)]
    assert lines == [caption_image(managed.vlm, crop[0], INSTRUCTION, 5) or "." for crop in crops]
    assert text == "\n".join(lines)
    hinted = caption_node(managed, image, tile_size=64, tile_stride=48, hint={"samples": torch.zeros(1, 4, 24, 36)})[1]
    assert hinted == [caption_image(managed.vlm, crop[0], INSTRUCTION, 5) or "."
                      for crop in tile_crops(image, 8, 6, latent_size=(24, 36))]


def test_per_tile_captions_need_one_image_at_the_sampling_size(tiny_llava):
    managed = load_managed_vlm(tiny_llava)
    with pytest.raises(ValueError, match="the tiles of one image; got a batch of 2"):
        caption_node(managed, torch.rand(2, 64, 64, 3), tile_size=64, tile_stride=32)
    with pytest.raises(ValueError, match="image \\(64x60 px\\) is not a whole multiple of the latent"):
        caption_node(managed, torch.rand(1, 60, 64, 3), tile_size=64, tile_stride=32)
    with pytest.raises(ValueError, match="image \\(64x64 px\\) is not a whole multiple of the latent .* \\(6x8\\)"):
        caption_node(managed, torch.rand(1, 64, 64, 3), tile_size=64, tile_stride=32,
                     hint={"samples": torch.zeros(1, 4, 8, 6)})
    with pytest.raises(ValueError, match="tile_stride \\(80 px\\) must be between 8 px and tile_size"):
        caption_node(managed, torch.rand(1, 64, 64, 3), tile_size=64, tile_stride=80)
    for small in (1, 8, 32):  # the schema's min binds only widget values; a linked INT reaches execute as it is
        with pytest.raises(ValueError, match=f"tile_size \\({small} px\\) must be at least 64 px"):
            caption_node(managed, torch.rand(1, 64, 64, 3), tile_size=small, tile_stride=8)
