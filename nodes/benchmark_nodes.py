"""Benchmark nodes: load a folder of test images from ComfyUI's input directory, and write a benchmark report
(CSV, summary, comparison grid) into its output directory."""
from __future__ import annotations

import hashlib
import os

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..supir.checks import check_file_name, check_filename_prefix
from ..supir.image.io import image_names, pil_to_image, read_images
from ..supir.quality.benchmark import Report, crop_to_multiple
from ..supir.quality.metrics import LEARNED_METRICS, load_learned_metric
from .folders import input_subfolder, iqa_dir, skipped_report

CATEGORY = "supir/benchmark"
REPORT_TITLE = "SUPIR benchmark report"
# Learned metrics the report node had from its first version; the toggles of later ones are optional inputs, so
# API prompts and workflows saved before they existed still validate.
FIRST_LEARNED_METRICS = ("lpips", "dists", "clipiqa")


def folder_images(folder: str) -> tuple[str, list[str]]:
    """The path of an input folder and its image files, sorted by name; a clear error when there are none."""
    path = input_subfolder(folder)
    return path, image_names(path, f"folder {folder!r} ({path})")


class LoadImageFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoadImageFolder",
            display_name="SUPIR Load Image Folder",
            category=CATEGORY,
            description="Loads every image of a folder under ComfyUI's input directory, in name order, as a list: "
                        "nodes after it run once per image, so images of different sizes keep their own size "
                        "(nothing is resized). Each image is cropped at the bottom and right to a multiple of "
                        "'multiple' so that degrading, restoring and scoring line up. A file that cannot be read, "
                        "is too large to decode safely or smaller than 'multiple' is skipped and named in the "
                        "report.",
            inputs=[
                io.String.Input("folder", default="benchmark",
                                tooltip="Folder inside ComfyUI/input holding the high-quality (ground-truth) images, "
                                        "e.g. 'benchmark' for ComfyUI/input/benchmark."),
                io.Int.Input("multiple", default=32, min=1, max=512,
                             tooltip="Crop each image to sides that are multiples of this: the SR scale times 8 "
                                     "(32 for x4) lets SUPIR restore the LQ back to exactly the HQ size; 1 keeps "
                                     "the whole image."),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True,
                                tooltip="One IMAGE (batch of 1) per file, RGB (alpha dropped), EXIF-upright."),
                io.String.Output(display_name="names", is_output_list=True,
                                 tooltip="The file names, in the same order (for SUPIR Benchmark Report)."),
                io.String.Output(display_name="report",
                                 tooltip="How many images were loaded, and each file skipped (unreadable, too "
                                         "large, or smaller than 'multiple'), with the reason."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, multiple):
        """Changes when a file of the folder is added, removed or rewritten, so the folder is read again."""
        digest = hashlib.sha256(f"{folder}\0{multiple}".encode())
        try:
            path, names = folder_images(folder)
            for name in names:
                stat = os.stat(os.path.join(path, name))
                digest.update(f"\0{name}\0{stat.st_mtime_ns}\0{stat.st_size}".encode())
        except (ValueError, OSError):
            pass  # execute() reports the problem
        return digest.hexdigest()

    @classmethod
    def execute(cls, folder, multiple) -> io.NodeOutput:
        path, names = folder_images(folder)
        images, names, skipped = read_images(path, names)
        kept = []
        for image, name in zip(images, names):
            height, width = image.shape[:2]
            if min(height, width) < multiple:
                skipped.append(f"{name}: {width}x{height} px, smaller than multiple ({multiple} px); use a smaller "
                               "multiple or a larger image")
            else:
                kept.append((crop_to_multiple(image[None], multiple), name))
        if not kept:
            raise ValueError(f"folder {folder!r} ({path}) has no usable images. {skipped_report(skipped)}")
        report = "\n".join(filter(None, [f"{len(kept)} images from {path}", skipped_report(skipped)]))
        return io.NodeOutput([image for image, _ in kept], [name for _, name in kept], report)


def flatten(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """A list of IMAGE batches -> a list of single images :math:`(1, H, W, C)`, in order."""
    return [batch[i:i + 1] for batch in images for i in range(batch.shape[0])]


def learned_metric_tooltip(name: str) -> str:
    spec = LEARNED_METRICS[name]
    kind = ("a no-reference score" if spec.no_reference else
            "a distance to the HQ image" if spec.lower_is_better else "a similarity to the HQ image")
    better = "lower" if spec.lower_is_better else "higher"
    shared = "" if spec.folder == name else f", the folder {LEARNED_METRICS[spec.folder].title} reads"
    return (f"Also score {spec.title}, {kind} ({better} is better). Its files go in ComfyUI/models/iqa/{spec.folder}/"
            f"{shared} (never downloaded); a missing file is named in the error.")


class BenchmarkReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        learned = [io.Boolean.Input(name, default=False, optional=name not in FIRST_LEARNED_METRICS,
                                    tooltip=learned_metric_tooltip(name))
                   for name in LEARNED_METRICS]
        return io.Schema(
            node_id="SUPIRBenchmarkReport",
            display_name="SUPIR Benchmark Report",
            category=CATEGORY,
            description="Scores restored images against their high-quality originals (PSNR and SSIM on Y and RGB, "
                        "optional learned metrics) and writes a report folder into ComfyUI's output directory: "
                        "metrics.csv (one row per image), summary.md (mean ± std per metric), grid.png (LQ | "
                        "restored | HQ) and the LQ and restored PNGs. Restored images are rounded to 8 bits before "
                        "scoring, so the saved PNGs give the same scores. Takes lists (SUPIR Load Image Folder) "
                        "or batches, in the same order for all three image inputs.",
            inputs=[
                io.Image.Input("hq_images", tooltip="The high-quality originals (ground truth)."),
                io.Image.Input("lq_images", tooltip="The degraded inputs, any size (shown in the grid, not scored)."),
                io.Image.Input("restored_images", tooltip="The restorations, each the size of its HQ image."),
                io.Int.Input("crop_border", default=4, min=0, max=64,
                             tooltip="Pixels removed from each side before PSNR/SSIM: the SR scale (4 for x4), "
                                     "0 for same-size restoration."),
                *learned,
                io.String.Input("filename_prefix", default="supir_benchmark/report",
                                tooltip="Report folder name under ComfyUI/output; a counter is appended "
                                        "(supir_benchmark/report_00001_/)."),
                io.String.Input("names", optional=True, force_input=True,
                                tooltip="Image names for the CSV and the saved files (SUPIR Load Image Folder's "
                                        "names); image_001, image_002, ... when not connected."),
            ],
            outputs=[
                io.String.Output(display_name="summary", tooltip="The summary table (Markdown), as in summary.md."),
                io.Image.Output(display_name="grid", tooltip="The comparison grid, as in grid.png."),
            ],
            is_input_list=True,
            is_output_node=True,
        )

    @classmethod
    def execute(cls, hq_images, lq_images, restored_images, crop_border, filename_prefix, names=None,
                **learned) -> io.NodeOutput:
        hq, lq, restored = flatten(hq_images), flatten(lq_images), flatten(restored_images)
        if not len(hq) == len(lq) == len(restored):
            raise ValueError(f"got {len(hq)} HQ, {len(lq)} LQ and {len(restored)} restored images; connect one LQ and "
                             "one restored image for every HQ image, in the same order.")
        names = list(names) if names else [f"image_{i + 1:03d}" for i in range(len(hq))]
        if len(names) != len(hq):
            raise ValueError(f"got {len(names)} names for {len(hq)} images; connect the names output of the node that "
                             "loaded the HQ images, or leave 'names' unconnected.")
        for i, name in enumerate(names):
            check_file_name(name, f"names (image {i + 1})", ".png")  # the PNGs are named after it
        crop, prefix = crop_border[0], filename_prefix[0]
        check_filename_prefix(prefix, "filename_prefix", "_00001_.partial-00000000.")  # counter, staging folder
        chosen = [name for name in LEARNED_METRICS if learned.get(name, [False])[0]]
        scorers = {name: load_learned_metric(name, iqa_dir()) for name in chosen}
        output_dir = folder_paths.get_output_directory()
        full_folder, filename, counter, _, _ = folder_paths.get_save_image_path(prefix, output_dir)
        report_dir = os.path.join(full_folder, f"{filename}_{counter:05d}_")
        with Report(report_dir, crop, scorers) as report:
            for name, lq_image, restored_image, hq_image in zip(names, lq, restored, hq):
                report.add(name, lq_image, restored_image, hq_image)
            settings = (f"images: {len(hq)}, crop border: {crop}, learned metrics: {', '.join(chosen) or 'none'}, "
                        f"folder: {os.path.relpath(report_dir, output_dir)}")
            _, summary, grid = report.finish(REPORT_TITLE, settings)
        grid_view = ui.SavedResult("grid.png", os.path.relpath(report_dir, output_dir), io.FolderType.output)
        return io.NodeOutput(summary, pil_to_image(grid)[None], ui={"images": [grid_view], "text": (summary,)})


NODES = [LoadImageFolder, BenchmarkReport]
