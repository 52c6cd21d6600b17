"""Tier 2: SUPIR Load Image Folder and SUPIR Benchmark Report, in-process and as a benchmark graph through a real
ComfyUI server (folder -> degrade -> tiny SUPIR restore -> report)."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import os  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from supir_restore.nodes.benchmark_nodes import NODES, BenchmarkReport, LoadImageFolder  # noqa: E402
from supir_restore.supir.image.io import read_image  # noqa: E402
from supir_restore.supir.quality import benchmark, degradation, metrics  # noqa: E402
from helpers import read_csv  # noqa: E402
from host_helpers import assert_registered_with_descriptions_and_tooltips, run_node, write_lpips_weights, \
    write_photo  # noqa: E402

PRESET, SEED, MULTIPLE, CROP = "blur_sr_x4_noise", 3, 32, 4


def test_nodes_are_registered_with_descriptions_and_tooltips():
    assert_registered_with_descriptions_and_tooltips(NODES, "supir/benchmark")
    assert LoadImageFolder.GET_NODE_INFO_V1()["output_is_list"] == [True, True, False]
    report = BenchmarkReport.GET_NODE_INFO_V1()
    assert report["output_node"] and BenchmarkReport.INPUT_IS_LIST
    assert {"lpips", "dists", "clipiqa"} <= set(report["input"]["required"])  # the implemented learned metrics
    clipi = report["input"]["optional"]["clipi"][1]["tooltip"]  # added later: optional, so saved prompts still run
    assert "a similarity to the HQ image (higher is better)" in clipi and "models/iqa/clipiqa/, the folder CLIP-IQA" \
        in clipi


def test_load_image_folder_keeps_each_size_and_crops_to_the_multiple(comfy_dirs):
    folder = comfy_dirs / "input" / "set5"
    folder.mkdir()
    write_photo(folder / "b.png", 70, 50, 1)
    write_photo(folder / "a.jpg", 64, 96, 2)
    Image.new("RGBA", (40, 33), (10, 20, 30, 128)).save(folder / "c.webp", lossless=True)
    (folder / "readme.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a folder with an image-like name is not an image
    images, names, report = run_node(LoadImageFolder, folder="set5", multiple=MULTIPLE).result
    assert names == ["a.jpg", "b.png", "c.webp"] and report == f"3 images from {folder}"
    assert [tuple(t.shape) for t in images] == [(1, 64, 96, 3), (1, 64, 32, 3), (1, 32, 32, 3)]
    with Image.open(folder / "b.png") as im:
        pixels = torch.from_numpy(np.asarray(im).copy()).float() / 255
    assert torch.equal(images[1][0], pixels[:64, :32])  # cropped at the bottom and right, values untouched
    assert torch.equal(images[2][0], (torch.tensor([10, 20, 30]) / 255).expand(32, 32, 3))  # alpha dropped
    whole = run_node(LoadImageFolder, folder="set5", multiple=1).result[0]
    assert whole[1].shape == (1, 70, 50, 3)


def test_load_image_folder_errors_name_the_folder_and_the_fix(comfy_dirs):
    input_dir = str(comfy_dirs / "input")
    with pytest.raises(ValueError, match=r"folder 'missing' does not exist in ComfyUI's input directory: create "
                                         r".*missing and put the images in it"):
        run_node(LoadImageFolder, folder="missing", multiple=1)
    for escape in ("../output", os.path.join(input_dir, "set")):
        with pytest.raises(ValueError, match="must be a path inside ComfyUI's input directory"):
            run_node(LoadImageFolder, folder=escape, multiple=1)
    (comfy_dirs / "input" / "empty").mkdir()
    (comfy_dirs / "input" / "empty" / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=r"folder 'empty' \(.*empty\) has no images \(\.png, \.jpg"):
        run_node(LoadImageFolder, folder="empty", multiple=1)
    (comfy_dirs / "input" / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"'empty' .* has no usable images.*broken\.png: cannot be read as an "
                                         r"image.*remove or replace the file"):
        run_node(LoadImageFolder, folder="empty", multiple=1)
    write_photo(comfy_dirs / "input" / "tiny.png", 20, 20, 3)
    with pytest.raises(ValueError, match=r"^folder '' \(.*input\) has no usable images\. skipped 1 file: tiny\.png: "
                                         r"20x20 px, smaller than multiple \(32 px\); use a smaller multiple"):
        run_node(LoadImageFolder, folder="", multiple=32)  # "" is the input directory itself


def test_load_image_folder_skips_and_names_an_image_smaller_than_the_multiple(comfy_dirs):
    """One 1x1 file used to fail the whole folder."""
    folder = comfy_dirs / "input" / "mixed"
    folder.mkdir()
    write_photo(folder / "a.png", 64, 70, 0)
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    write_photo(folder / "wide.png", 20, 90, 1)
    images, names, report = run_node(LoadImageFolder, folder="mixed", multiple=32).result
    assert names == ["a.png"] and [tuple(t.shape) for t in images] == [(1, 64, 64, 3)]
    assert report.splitlines() == [f"1 images from {folder}",
                                   "skipped 2 files: dot.png: 1x1 px, smaller than multiple (32 px); use a smaller "
                                   "multiple or a larger image; wide.png: 90x20 px, smaller than multiple (32 px); "
                                   "use a smaller multiple or a larger image"]


def test_load_image_folder_fingerprint_follows_the_files(comfy_dirs):
    folder = comfy_dirs / "input" / "set"
    folder.mkdir()
    write_photo(folder / "a.png", 16, 16, 1)
    first = LoadImageFolder.fingerprint_inputs(folder="set", multiple=8)
    assert LoadImageFolder.fingerprint_inputs(folder="set", multiple=8) == first
    write_photo(folder / "b.png", 16, 16, 2)
    second = LoadImageFolder.fingerprint_inputs(folder="set", multiple=8)
    assert second != first and LoadImageFolder.fingerprint_inputs(folder="set", multiple=16) != second
    write_photo(folder / "a.png", 16, 24, 3)  # rewritten: another size and time
    assert LoadImageFolder.fingerprint_inputs(folder="set", multiple=8) != second


def report_inputs(hq, lq, restored, names=None, crop_border=CROP, prefix="bench/report", **learned):
    """The node's inputs as ComfyUI passes them to an is_input_list node: every input a list."""
    inputs = {"hq_images": hq, "lq_images": lq, "restored_images": restored, "crop_border": [crop_border],
              "filename_prefix": [prefix],
              **{k: [learned.get(k, False)] for k in ("lpips", "dists", "clipiqa", *learned)}}
    return inputs | ({"names": names} if names is not None else {})


def test_report_node_writes_consistent_files(comfy_dirs):
    g = torch.Generator().manual_seed(0)
    hq = [torch.rand(1, 64, 96, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)]  # a list holding a batch
    lq = [degradation.degrade(h, "sr_x4", SEED) for h in hq]
    restored = [benchmark.Bicubic(4)(x) for x in lq]
    out = run_node(BenchmarkReport, **report_inputs(hq, lq, restored, ["x.png", "y.png", "z.png"]))
    summary, grid = out.result
    report_dir = comfy_dirs / "output" / "bench" / "report_00001_"
    rows = read_csv(report_dir / "metrics.csv")
    assert [r["image"] for r in rows] == ["x.png", "y.png", "z.png"]
    singles = [(h[i:i + 1], r[i:i + 1]) for h, r in zip(hq, restored) for i in range(h.shape[0])]
    for row, (h, r) in zip(rows, singles):
        expected = metrics.fidelity_metrics(degradation.quantize(r), h, CROP)
        assert {k: float(row[k]) for k in expected} == pytest.approx({k: v.item() for k, v in expected.items()},
                                                                      abs=1e-6)  # the CSV holds 6 decimals
    assert (report_dir / "summary.md").read_text(encoding="utf-8") == summary
    mean = statistics.fmean(float(r["psnr_y"]) for r in rows)
    assert f"| psnr_y | {mean:.4f} ± " in summary and "images: 3, crop border: 4" in summary
    with Image.open(report_dir / "grid.png") as im:
        assert im.size == (grid.shape[2], grid.shape[1]) and grid.shape[1] == 3 * 256
        assert np.array_equal(np.asarray(im), (grid[0] * 255).round().to(torch.uint8).numpy())
    assert sorted(os.listdir(report_dir / "lq")) == ["x.png", "y.png", "z.png"]
    assert out.ui["images"][0] == {"filename": "grid.png", "subfolder": os.path.join("bench", "report_00001_"),
                                   "type": "output"}
    assert out.ui["text"] == (summary,)
    # a second run gets the next counter; without names the images are numbered
    run_node(BenchmarkReport, **report_inputs(hq, lq, restored))
    assert [r["image"] for r in read_csv(comfy_dirs / "output" / "bench" / "report_00002_" / "metrics.csv")] == [
        "image_001", "image_002", "image_003"]


def test_report_node_learned_metric_and_errors(comfy_dirs):
    g = torch.Generator().manual_seed(1)
    hq = [torch.rand(1, 48, 48, 3, generator=g)]
    lq = [degradation.degrade(hq[0], "noise", 0)]
    with pytest.raises(metrics.MissingWeightsError, match=r"alexnet-owt-7be5be79\.pth in .*models.iqa.lpips"):
        run_node(BenchmarkReport, **report_inputs(hq, lq, lq, lpips=True))
    with pytest.raises(metrics.MissingWeightsError, match=r"^CLIP-I .*config\.json in .*models.iqa.clipiqa "):
        run_node(BenchmarkReport, **report_inputs(hq, lq, lq, clipi=True))
    folder = comfy_dirs / "models" / "iqa" / "lpips"
    folder.mkdir(parents=True)
    write_lpips_weights(folder)
    summary = run_node(BenchmarkReport, **report_inputs(hq, lq, lq, ["n.png"], 0, "lp/r", lpips=True)).result[0]
    row = read_csv(comfy_dirs / "output" / "lp" / "r_00001_" / "metrics.csv")[0]
    lpips = metrics.load_learned_metric("lpips", str(comfy_dirs / "models" / "iqa"))
    # the same computation; the CSV holds 6 decimals
    assert float(row["lpips"]) == pytest.approx(lpips(degradation.quantize(lq[0]), hq[0]).item(), abs=1e-6)
    assert "| lpips |" in summary and "| lower |" in summary and "learned metrics: lpips" in summary
    with pytest.raises(ValueError, match="got 1 HQ, 2 LQ and 1 restored images"):
        run_node(BenchmarkReport, **report_inputs(hq, lq * 2, lq))
    with pytest.raises(ValueError, match="got 2 names for 1 images"):
        run_node(BenchmarkReport, **report_inputs(hq, lq, lq, ["a", "b"]))
    with pytest.raises(ValueError, match=r"a: the restored image is 12x12 but the HQ image is 48x48"):
        run_node(BenchmarkReport, **report_inputs(hq, lq, [lq[0][:, :12, :12]], ["a"]))


def test_report_node_reports_perfect_restorations_and_leaves_nothing_when_it_fails(comfy_dirs):
    g = torch.Generator().manual_seed(2)
    hq = [degradation.quantize(torch.rand(1, 32, 32, 3, generator=g)) for _ in range(2)]
    summary = run_node(BenchmarkReport, **report_inputs(hq, hq, hq, ["a.png", "b.png"], 0, "perfect/r")).result[0]
    assert "| psnr_y | inf (all 2 identical to the HQ image) | higher |" in summary
    assert read_csv(comfy_dirs / "output" / "perfect" / "r_00001_" / "metrics.csv")[1]["psnr_rgb"] == "inf"

    with pytest.raises(ValueError, match="b.png: the restored image is 16x16"):
        run_node(BenchmarkReport, **report_inputs(hq, hq, [hq[0], hq[1][:, :16, :16]], ["a.png", "b.png"], 0,
                                                  "failed/r"))
    assert os.listdir(comfy_dirs / "output" / "failed") == []


@pytest.mark.parametrize("prefix, problem", [("", "empty"), ("bench/\nreport", "control character"),
                                             ("bench/" + "r" * 240, "too long"), ("../outside", "output folder")])
def test_report_node_checks_its_prefix_before_scoring(comfy_dirs, prefix, problem):
    hq = [torch.rand(1, 32, 32, 3)]
    with pytest.raises(ValueError, match=f"^filename_prefix.*{problem}"):
        run_node(BenchmarkReport, **report_inputs(hq, hq, hq, None, 0, prefix, lpips=True))  # lpips has no files
    assert os.listdir(comfy_dirs / "output") == []


@pytest.mark.parametrize("name, problem", [("a\0b", "contains the control character '\\\\x00'"),
                                           ("..", "is not a file name"), ("n" * 300, "is too long"),
                                           ("sub/a.png", "one name, without folders")])
def test_report_node_names_the_image_name_the_file_system_refuses_before_scoring(comfy_dirs, name, problem):
    hq = [torch.rand(1, 32, 32, 3)] * 2
    with pytest.raises(ValueError, match=f"^names \\(image 2\\) .*{problem}"):
        run_node(BenchmarkReport, **report_inputs(hq, hq, hq, ["fine.png", name], 0, lpips=True))  # no lpips files
    assert os.listdir(comfy_dirs / "output") == []


# ------------------------------------------------------------------------------------------------ through the server

def benchmark_graph(folder="bench", prefix="bench/report", preset=PRESET, seed=SEED, multiple=MULTIPLE,
                    crop_border=CROP, steps=2):
    """The benchmark workflow in API form:

    SUPIR Load Image Folder (HQ, a list) -> Degrade Image (LQ at the HQ size) -> SUPIR LQ Encode -> SUPIR Apply Control ->
    KSampler -> VAE Decode (restored) -> SUPIR Benchmark Report (HQ, LQ, restored, names).

    Every node between the folder and the report runs once per image; the report receives the whole lists. The
    checkpoint and SUPIR file are the tiny test models, and SUPIRTestConditioning (test shim) stands in for the
    text encoders; a shipped workflow uses CheckpointLoaderSimple's CLIP with SUPIR Conditioning instead.
    """
    return {
        "1": {"class_type": "SUPIRLoadImageFolder", "inputs": {"folder": folder, "multiple": multiple}},
        "2": {"class_type": "SUPIRDegradeImage", "inputs": {"image": ["1", 0], "preset": preset, "seed": seed,
                                                            "resize_to_input": True}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}},
        "4": {"class_type": "SUPIRLoader", "inputs": {"supir_name": "tiny_supir_fp16.safetensors",
                                                      "weight_dtype": "auto"}},
        "5": {"class_type": "SUPIRLQEncode", "inputs": {"supir": ["4", 0], "vae": ["3", 2], "image": ["2", 0],
                                                       "tile_size": 0}},
        "6": {"class_type": "ApplySUPIR", "inputs": {"model": ["3", 0], "supir": ["4", 0], "hint": ["5", 0],
                                                     "control_scale_start": 1.0, "control_scale_end": 1.0}},
        "7": {"class_type": "SUPIRTestConditioning", "inputs": {"seed": 1}},
        "8": {"class_type": "SUPIRTestConditioning", "inputs": {"seed": 2}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "positive": ["7", 0], "negative": ["8", 0],
                                                   "latent_image": ["5", 0], "seed": 0, "steps": steps, "cfg": 4.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["3", 2]}},
        "11": {"class_type": "SUPIRBenchmarkReport", "inputs": {
            "hq_images": ["1", 0], "lq_images": ["2", 0], "restored_images": ["10", 0], "names": ["1", 1],
            "crop_border": crop_border, "lpips": False, "dists": False, "clipiqa": False,
            "filename_prefix": prefix}},
    }


@pytest.fixture(scope="module")
def bench_server(comfy_server):
    """Two HQ images of different sizes in the server's input/bench folder."""
    folder = os.path.join(comfy_server.base, "input", "bench")
    os.makedirs(folder, exist_ok=True)
    write_photo(os.path.join(folder, "harbour.png"), 70, 50, 11)  # cropped to 64x32
    write_photo(os.path.join(folder, "street.png"), 64, 96, 12)
    return comfy_server


def test_benchmark_graph_runs_through_the_server_and_writes_its_files(bench_server):
    status, result = bench_server.run_prompt(benchmark_graph())
    assert status == 200, result
    assert result["status"]["status_str"] == "success", result["status"]["messages"]
    view = result["outputs"]["11"]["images"][0]
    report_dir = os.path.join(bench_server.base, "output", view["subfolder"])
    assert view["filename"] == "grid.png" and view["subfolder"] == os.path.join("bench", "report_00001_")
    assert sorted(os.listdir(report_dir)) == ["grid.png", "lq", "metrics.csv", "restored", "summary.md"]
    rows = read_csv(os.path.join(report_dir, "metrics.csv"))
    assert [r["image"] for r in rows] == ["harbour.png", "street.png"]  # one row per image, in name order
    for i, row in enumerate(rows):
        hq = benchmark.crop_to_multiple(read_image(os.path.join(bench_server.base, "input", "bench",
                                                                row["image"]))[None], MULTIPLE)
        lq = read_image(os.path.join(report_dir, "lq", row["image"]))[None]
        assert torch.equal(lq, degradation.quantize(degradation.degrade(hq, PRESET, SEED + i, True)))  # seed + i
        restored = read_image(os.path.join(report_dir, "restored", row["image"]))[None]
        assert restored.shape == hq.shape and restored.std() > 0
        expected = metrics.fidelity_metrics(restored, hq, CROP)
        for k, v in expected.items():
            assert float(row[k]) == pytest.approx(v.item(), abs=1e-6), k  # float64 metrics; the CSV's 6 decimals
    summary = open(os.path.join(report_dir, "summary.md"), encoding="utf-8").read()
    assert result["outputs"]["11"]["text"] == [summary]
    for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"):
        values = [float(r[k]) for r in rows]
        assert f"| {k} | {statistics.fmean(values):.4f} ± {statistics.pstdev(values):.4f} | higher |" in summary
    with Image.open(os.path.join(report_dir, "grid.png")) as grid:
        assert grid.size == (max(3 * round(w * 256 / h) for h, w in ((64, 32), (64, 96))), 2 * 256)


def test_missing_folder_fails_with_a_clear_message_through_the_server(bench_server):
    status, result = bench_server.run_prompt(benchmark_graph(folder="no_such_folder"))
    assert status == 200 and result["status"]["status_str"] == "error"
    errors = [m[1] for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SUPIRLoadImageFolder"
    assert "does not exist in ComfyUI's input directory" in errors[0]["exception_message"]
