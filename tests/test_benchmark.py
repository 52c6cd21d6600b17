"""Benchmark: degrade a folder, restore with a callable, score, and write CSV, summary and grid."""
import os
import statistics

import pytest
import skimage.data
import torch
from PIL import Image

from supir_restore.supir.image.io import read_image
from supir_restore.supir.quality import benchmark as b, degradation, metrics

from helpers import read_csv


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


def test_benchmark_writes_scores_that_match_the_saved_images(hq_dir, tmp_path):
    out = str(tmp_path / "out")
    result = b.run_benchmark(hq_dir, out, "blur_sr_x4_noise", b.Bicubic(4), seed=5, grid_height=64)
    assert result.names == ["astronaut.png", "chelsea.png", "coffee.jpg"]
    rows = read_csv(os.path.join(out, "metrics.csv"))
    assert [r["image"] for r in rows] == result.names
    assert list(rows[0]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"]
    for i, row in enumerate(rows):
        name = os.path.splitext(row["image"])[0]
        lq = read_image(os.path.join(out, "lq", name + ".png"))[None]
        hq = read_image(os.path.join(hq_dir, row["image"]))[None]
        hq = hq[:, :hq.shape[1] // 4 * 4, :hq.shape[2] // 4 * 4]  # cropped to a multiple of the scale
        assert lq.shape[1] * 4 == hq.shape[1] and lq.shape[2] * 4 == hq.shape[2]
        assert torch.equal(lq, degradation.degrade(hq, "blur_sr_x4_noise", 5 + i))  # image i uses seed + i
        restored = read_image(os.path.join(out, "restored", name + ".png"))[None]
        assert torch.equal(restored, degradation.quantize(b.Bicubic(4)(lq)))  # scored as saved: on the 8-bit grid
        expected = metrics.fidelity_metrics(restored, hq, crop_border=4)  # the SR convention: border = scale
        for k, v in expected.items():
            assert float(row[k]) == pytest.approx(v.item(), abs=1e-6)  # float64 metrics; the CSV's 6 decimals
    summary = open(os.path.join(out, "summary.md")).read()
    for k, values in result.scores.items():
        col = [float(r[k]) for r in rows]
        mean, std = map(float, result.summary()[k].split(" ± "))
        assert mean == pytest.approx(statistics.fmean(col), abs=1e-4)  # to the summary's 4 decimals
        assert std == pytest.approx(statistics.pstdev(col), abs=1e-4)
        assert f"| {k} | {result.summary()[k]} | higher |" in summary
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
        assert v == pytest.approx(bicubic.scores[k], rel=1e-9)  # float64 metrics of images equal in float32


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
    assert b.resolve_restore("supir_restore.supir.quality.benchmark:identity", 4) is b.identity
    assert b.resolve_restore("bicubic", 2) == b.Bicubic(2)
    with pytest.raises(ValueError, match="cannot load 'restore' from module 'no_such_module'"):
        b.resolve_restore("no_such_module:restore", 4)
    lq = torch.rand(1, 10, 12, 3)
    assert b.Bicubic(2)(lq).shape == (1, 20, 24, 3)


def test_report_scores_any_restorations_and_names_size_mismatches(tmp_path):
    """The report the node and the CLI share: any order of sizes, learned scorers as extra columns, unique files."""
    g = torch.Generator().manual_seed(0)
    hqs = [torch.rand(1, 40, 48, 3, generator=g), torch.rand(1, 32, 32, 3, generator=g)]
    mae = lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)).double()  # noqa: E731 (any Metric works)
    report = b.Report(str(tmp_path / "r"), crop_border=2, learned={"mae": mae}, grid_height=20)
    for name, hq in zip(["a.png", "a.jpg"], hqs):  # same stem: the second keeps its extension in the file name
        lq = degradation.degrade(hq, "sr_x2", 0)
        values = report.add(name, lq, b.Bicubic(2)(lq) + 0.3, hq)  # out of range: clamped and rounded first
        restored = degradation.quantize(b.Bicubic(2)(lq) + 0.3)
        assert values["psnr_rgb"] == metrics.psnr(restored, hq, 2, y_channel=False).item()
        assert values["mae"] == mae(restored, hq).item()
    with pytest.raises(ValueError, match=r"c\.png: the restored image is 16x20 but the HQ image is 48x40 \(width x "
                                         r"height\); restore to the HQ size"):
        report.add("c.png", hqs[0], hqs[0][:, :20, :16], hqs[0])
    with pytest.raises(ValueError, match="d.png: the restored input holds 2 images; add one image at a time"):
        report.add("d.png", hqs[1], hqs[1].expand(2, -1, -1, -1), hqs[1].expand(2, -1, -1, -1))
    result, summary, grid = report.finish("Title", "settings line")
    assert result.names == ["a.png", "a.jpg"]
    assert sorted(os.listdir(tmp_path / "r" / "restored")) == ["a.jpg.png", "a.png"]
    assert summary.startswith("# Title\n\nsettings line\n") and "| mae |" in summary and "| higher |" in summary
    assert open(tmp_path / "r" / "summary.md", encoding="utf-8").read() == summary
    assert list(read_csv(tmp_path / "r" / "metrics.csv")[0]) == ["image", "psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb",
                                                                  "mae"]
    assert grid.size == (3 * round(48 * 20 / 40), 2 * 20)
    assert b.lower_is_better("lpips") and b.lower_is_better("dists") and not b.lower_is_better("clipiqa")
    with pytest.raises(ValueError, match="no images to report on"):
        b.Report(str(tmp_path / "empty"), 0).finish("t", "s")


def test_unreadable_images_and_small_crops_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"broken\.png: cannot be read as an image"):
        b.run_benchmark(str(tmp_path), str(tmp_path / "out"), "sr_x4", b.identity)
    assert b.crop_to_multiple(torch.zeros(1, 70, 45, 3), 32).shape == (1, 64, 32, 3)
    with pytest.raises(ValueError, match="a 70x45 image has no 64x64 part"):
        b.crop_to_multiple(torch.zeros(1, 70, 45, 3), 64)
    with pytest.raises(ValueError, match=r"^multiple \(0\) must be at least 1"):  # a linked INT below the schema's min
        b.crop_to_multiple(torch.zeros(1, 70, 45, 3), 0)


def test_perfect_restorations_report_inf_psnr(tmp_path):
    g = torch.Generator().manual_seed(1)
    hq = [degradation.quantize(torch.rand(1, 16, 16, 3, generator=g)) for _ in range(3)]
    with b.Report(str(tmp_path / "perfect"), 0, grid_height=16) as report:
        report.add("same.png", hq[0], hq[0], hq[0])
        report.add("also_same.png", hq[1], hq[1], hq[1])
        result, summary, _ = report.finish("Title", "s")
    rows = read_csv(tmp_path / "perfect" / "metrics.csv")
    assert [r["psnr_y"] for r in rows] == ["inf", "inf"] and rows[0]["ssim_y"] == "1.000000"
    assert "| psnr_y | inf (all 2 identical to the HQ image) | higher |" in summary
    assert "PSNR inf: 2 restoration(s) identical to the HQ image (same.png, also_same.png)" in summary

    with b.Report(str(tmp_path / "mixed"), 0, grid_height=16) as report:
        report.add("same.png", hq[0], hq[0], hq[0])
        report.add("other.png", hq[1], hq[2], hq[1])
        report.add("third.png", hq[2], hq[0], hq[2])
        mixed, summary, _ = report.finish("Title", "s")
    # an identical restoration used to make this row "inf ± inf": the others' statistics say more
    other = [metrics.psnr(degradation.quantize(r), h).item() for r, h in ((hq[2], hq[1]), (hq[0], hq[2]))]
    assert (f"| psnr_y | {statistics.fmean(other):.4f} ± {statistics.pstdev(other):.4f} over the other 2 "
            "(1 identical: inf) | higher |") in summary
    assert "| ssim_y | " in summary and "identical" not in summary.split("| ssim_y |")[1].splitlines()[0]


def test_a_report_that_fails_midway_leaves_no_folder(tmp_path):
    hq = torch.rand(1, 16, 16, 3)
    with pytest.raises(ValueError, match="b.png: the restored image is 8x8"):
        with b.Report(str(tmp_path / "report"), 0) as report:
            report.add("a.png", hq, hq, hq)
            report.add("b.png", hq, hq[:, :8, :8], hq)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("what", ["LQ", "restored", "HQ"])
def test_non_finite_images_are_errors_naming_the_image(tmp_path, what):
    images = {k: torch.rand(1, 8, 8, 3) for k in ("LQ", "restored", "HQ")}
    images[what][0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=f"a.png: the {what} image contains 1 NaN"):
        with b.Report(str(tmp_path / "report"), 0) as report:
            report.add("a.png", images["LQ"], images["restored"], images["HQ"])
    assert os.listdir(tmp_path) == []


def test_the_cli_report_into_an_existing_folder_replaces_only_its_own_files(hq_dir, tmp_path):
    out = tmp_path / "cli"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    b.run_benchmark(hq_dir, str(out), "noise", b.identity, grid_height=16)
    assert (out / "notes.md").read_text() == "mine" and (out / "metrics.csv").is_file()
    assert sorted(os.listdir(tmp_path)) == ["cli", "hq"]
