"""Tier 2: the Degrade and Metrics nodes, run in-process the way ComfyUI's executor runs V3 nodes."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import os  # noqa: E402

import folder_paths  # noqa: E402
import torch  # noqa: E402

from supir_restore.nodes.degradation_nodes import NODES, DegradeImage, ImageMetrics  # noqa: E402
from supir_restore.supir.quality import degradation, metrics  # noqa: E402
from host_helpers import assert_registered_with_descriptions_and_tooltips, run_node, smooth_photo, \
    write_lpips_weights  # noqa: E402


def photo(seed=0, h=96, w=80):
    return smooth_photo(h, w, seed)


def test_nodes_are_registered_with_descriptions_and_tooltips():
    assert_registered_with_descriptions_and_tooltips(NODES, "supir/benchmark")
    presets = DegradeImage.GET_NODE_INFO_V1()["input"]["required"]["preset"]
    assert presets[1]["options"] == list(degradation.DEGRADATION_PRESETS)


def degrade_node(images, preset, seed, resize_to_input=False):
    """The node takes its inputs as lists (is_input_list) and returns a list of batches."""
    return run_node(DegradeImage, image=list(images), preset=[preset], seed=[seed],
                    resize_to_input=[resize_to_input]).result[0]


@pytest.mark.parametrize("preset, scale", [("realesrgan_x4", 4), ("blur_sr_x4_noise", 4), ("jpeg", 1)])
def test_degrade_node_matches_the_function(preset, scale):
    image = torch.cat([photo(0), photo(1)])
    (lq,) = degrade_node([image], preset, 7)
    assert lq.shape == (2, 96 // scale, 80 // scale, 3)
    assert torch.equal(lq, degradation.degrade(image, preset, 7))
    (back,) = degrade_node([image], preset, 7, resize_to_input=True)
    assert back.shape == image.shape


def test_degrade_node_counts_seeds_through_a_list_as_through_a_batch():
    """Image i uses seed + i whether the images come as one batch or as a list (SUPIR Load Image Folder), so the
    graph makes the same LQ images as the command-line benchmark."""
    images = [photo(0), torch.cat([photo(1), photo(2)]), photo(3, 80, 96)]
    out = degrade_node(images, "realesrgan_x4", 11)
    assert [t.shape[0] for t in out] == [1, 2, 1] and out[2].shape == (1, 20, 24, 3)
    batch = degrade_node([torch.cat(images[:2])], "realesrgan_x4", 11)[0]
    assert torch.equal(torch.cat(out[:2]), batch)
    assert torch.equal(out[2], degradation.degrade(images[2], "realesrgan_x4", 11 + 3))
    first_of_second = degradation.degrade(images[1][:1], "realesrgan_x4", 12)  # the list's second image: seed + 1
    assert torch.equal(out[1][:1], first_of_second)
    assert not torch.equal(first_of_second, degradation.degrade(images[1][:1], "realesrgan_x4", 11))


def test_metrics_node_outputs_batch_means_and_a_report():
    hq = photo(2)
    (lq,) = degrade_node([hq.expand(2, -1, -1, -1)], "sr_x4", 0, resize_to_input=True)
    out = run_node(ImageMetrics, image=lq, reference=hq, crop_border=4, learned_metric="none")
    psnr_y, ssim_y, psnr_rgb, ssim_rgb, report = out.result
    assert psnr_y == pytest.approx(metrics.psnr(lq, hq, 4).mean().item())  # the same float64 metrics: rel 1e-6
    assert ssim_rgb == pytest.approx(metrics.ssim(lq, hq, 4, y_channel=False).mean().item())
    assert 15 < psnr_rgb < psnr_y and 0 < ssim_y < 1
    assert "psnr_y: mean" in report and "crop_border 4" in report
    assert out.ui.as_dict() == {"text": (report,)}


def test_metrics_node_learned_metric_reads_comfyui_models_iqa(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    hq = photo(3, 64, 64)
    with pytest.raises(metrics.MissingWeightsError) as err:
        run_node(ImageMetrics, image=hq, reference=hq, crop_border=0, learned_metric="lpips")
    assert os.path.join(str(tmp_path), "iqa", "lpips") in str(err.value)
    with pytest.raises(metrics.MissingWeightsError, match=r"^CLIP-I .*config\.json in .*iqa.clipiqa "):
        run_node(ImageMetrics, image=hq, reference=hq, crop_border=0, learned_metric="clipi")  # CLIP-IQA's folder
    folder = tmp_path / "iqa" / "lpips"
    folder.mkdir(parents=True)
    write_lpips_weights(folder)
    out = run_node(ImageMetrics, image=torch.cat([hq, photo(4, 64, 64)]), reference=hq, crop_border=0,
                   learned_metric="lpips")
    report = out.result[4]
    values = [float(v) for v in report.split("lpips: mean")[1].split("[")[1].rstrip("]").split(",")]
    assert values[0] == 0 and values[1] > 0
