"""Benchmark: degrade a folder, restore with a callable, score, and write CSV, summary and grid."""
import csv
import os
import statistics

import pytest
import skimage.data
import torch
from PIL import Image

from supir_restore.supir import benchmark as b, degradation, metrics


@pytest.fixture()
def hq_dir(tmp_path):
    """Three real photographs, one with sides that are not multiples of 4."""
    folder = tmp_path / "hq"
    folder.mkdir()
    Image.fromarray(skimage.data.astronaut()[:128, :128]).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.chelsea()[:130, :97]).save(folder / "chelsea.png")
    Image.fromarray(skimage.data.coffee()[:96, :144]).save(folder / "coffee.jpg")
    (folder / "notes.txt").write_text("not an image")
    return str(folder)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_benchmark_writes_scores_that_match_the_saved_images(hq_dir, tmp_path):
    out = str(tmp_path / "out")
    result = b.run_benchmark(hq_dir, out, "blur_sr_x4_noise", b.Bicubic(4), seed=5, grid_height=64)
    assert result.names == ["astronaut.png", "chelsea.png", "coffee.jpg"]
    rows = read_csv(os.path.join(out, "metrics.csv"))
    assert [r["image"] for r in rows] == result.names
    assert list(rows[0]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]
    for i, row in enumerate(rows):
        name = os.path.splitext(row["image"])[0]
        lq = b.load_image(os.path.join(out, "lq", name + ".png"))
        hq = b.load_image(os.path.join(hq_dir, row["image"]))
        hq = hq[:, :hq.shape[1] // 4 * 4, :hq.shape[2] // 4 * 4]  # cropped to a multiple of the scale
        assert lq.shape[1] * 4 == hq.shape[1] and lq.shape[2] * 4 == hq.shape[2]
        assert torch.equal(lq, degradation.degrade(hq, "blur_sr_x4_noise", 5 + i))  # image i uses seed + i
        expected = metrics.fidelity_metrics(b.Bicubic(4)(lq), hq, crop_border=4)  # the SR convention: border = scale
        for k, v in expected.items():
            assert float(row[k]) == pytest.approx(v.item(), abs=2e-6)
    summary = open(os.path.join(out, "summary.md")).read()
    for k, values in result.scores.items():
        col = [float(r[k]) for r in rows]
        mean, std = result.summary()[k]
        assert mean == pytest.approx(statistics.fmean(col), abs=1e-5)
        assert std == pytest.approx(statistics.pstdev(col), abs=1e-5)
        assert f"| {k} | {mean:.4f} ± {std:.4f} |" in summary
    assert "blur_sr_x4_noise" in summary and "crop border: 4" in summary
    grid = Image.open(os.path.join(out, "grid.png"))
    widths = [sum(round(w * 64 / h) for _ in range(3)) for h, w in ((128, 128), (128, 96), (96, 144))]
    assert grid.size == (max(widths), 3 * 64)


def test_identity_needs_the_hq_size_and_resize_back_gives_it(hq_dir, tmp_path):
    with pytest.raises(ValueError, match=r"astronaut\.png: the restore function returned \(1, 32, 32, 3\) but the "
                                         r"HQ image is \(1, 128, 128, 3\).*resize_back"):
        b.run_benchmark(hq_dir, str(tmp_path / "a"), "sr_x4", b.identity)
    # the LQ resized back is exactly what the bicubic baseline restores
    back = b.run_benchmark(hq_dir, str(tmp_path / "b"), "sr_x4", b.identity, resize_back=True)
    bicubic = b.run_benchmark(hq_dir, str(tmp_path / "c"), "sr_x4", b.Bicubic(4))
    for k, v in back.scores.items():
        assert v == pytest.approx(bicubic.scores[k], abs=1e-9)


def test_cli_runs_a_baseline_and_reports_bad_arguments(hq_dir, tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert b.main([hq_dir, out, "--preset", "noise", "--restore", "identity", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(os.path.join(out, "metrics.csv"))
    assert len(rows) == 3 and "psnr_y" in printed and "±" in printed
    mean_psnr = statistics.fmean(float(r["psnr_rgb"]) for r in rows)
    assert 19 < mean_psnr < 22  # sigma 25/255 noise: about 20.2 dB before clipping, identity restores nothing
    with pytest.raises(SystemExit) as exit_info:
        b.main([hq_dir, out, "--preset", "sr_x4", "--learned", "lpips", "--iqa-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        b.main([hq_dir, out, "--restore", "nonsense"])
    assert "module:function" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        b.main([str(tmp_path / "missing"), out])
    assert "does not exist" in capsys.readouterr().err


def test_restore_can_be_any_importable_callable():
    assert b.resolve_restore("supir_restore.supir.benchmark:identity", 4) is b.identity
    assert b.resolve_restore("bicubic", 2) == b.Bicubic(2)
    with pytest.raises(ValueError, match="cannot load 'restore' from module 'no_such_module'"):
        b.resolve_restore("no_such_module:restore", 4)
    lq = torch.rand(1, 10, 12, 3)
    assert b.Bicubic(2)(lq).shape == (1, 20, 24, 3)
