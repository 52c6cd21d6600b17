"""Benchmark: degrade a folder of HQ images with a preset, restore them, score them, and write a report.

Run from the repository (or, inside ComfyUI's ``custom_nodes``, as ``python -m supir_restore.supir.quality.benchmark``)::

    python -m supir.quality.benchmark HQ_DIR OUT_DIR --preset sr_x4 --restore bicubic

``--restore`` takes ``identity``, ``bicubic`` or ``module:function`` naming any Python callable IMAGE -> IMAGE.
OUT_DIR receives ``lq/`` and ``restored/`` PNGs, ``metrics.csv`` (one row per image), ``summary.md`` (mean ± std
per metric) and ``grid.png`` (LQ | restored | HQ rows). The ComfyUI node "SUPIR Benchmark Report" writes the same
files through :class:`Report`.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import math
import os
import shutil
import statistics
import sys
import uuid
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image, ImageDraw

from ..checks import check_finite_image
from ..image.io import image_names, read_image
from . import degradation
from . import metrics
from ..image.io import image_to_pil

Restore = Callable[[torch.Tensor], torch.Tensor]


def identity(lq: torch.Tensor) -> torch.Tensor:
    """Baseline that returns the LQ unchanged (for same-size presets, or with ``resize_back``)."""
    return lq


@dataclass(frozen=True)
class Bicubic:
    """Baseline that bicubic-upsamples the LQ ×``scale``: :math:`(B, h, w, 3) \\to (B, s h, s w, 3)`."""
    scale: int

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        return degradation.resize(lq, (lq.shape[1] * self.scale, lq.shape[2] * self.scale), "bicubic").clamp(0, 1)


def resolve_restore(spec: str, scale: int) -> Restore:
    """``identity``, ``bicubic`` or ``package.module:function`` -> a callable IMAGE -> IMAGE."""
    if spec == "identity":
        return identity
    if spec == "bicubic":
        return Bicubic(scale)
    module, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"--restore {spec!r}: use identity, bicubic, or module:function (a callable IMAGE -> IMAGE).")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--restore {spec!r}: cannot load {attr!r} from module {module!r} ({e}).") from e


def save_image(image: torch.Tensor, path: str) -> None:
    """IMAGE :math:`(1, H, W, 3)` -> 8-bit PNG."""
    image_to_pil(image[0]).save(path)


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crops :math:`(B, H, W, C)` at the bottom and right to sides that are multiples of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"multiple ({multiple}) must be at least 1 (1 keeps the whole image).")
    h, w = image.shape[1] // multiple * multiple, image.shape[2] // multiple * multiple
    if h == 0 or w == 0:
        raise ValueError(f"a {image.shape[1]}x{image.shape[2]} image has no {multiple}x{multiple} part; use a smaller "
                         "multiple or a larger image.")
    return image[:, :h, :w]


@dataclass
class BenchmarkResult:
    names: list[str]
    scores: dict[str, list[float]]  # metric -> one value per image, in ``names`` order

    def summary(self) -> dict[str, str]:
        """metric -> its mean ± population standard deviation over the images, as text (:func:`mean_std_text`)."""
        return {k: mean_std_text(v) for k, v in self.scores.items()}


def mean_std_text(values: list[float]) -> str:
    """``mean ± std`` of the scores to 4 decimals. An infinite score is the PSNR of a restoration identical to its HQ
    image: the statistics are of the other images, with the identical ones counted, since a mean or spread with an
    infinite term says nothing about the rest."""
    finite = [v for v in values if math.isfinite(v)]
    identical = len(values) - len(finite)
    if not finite:
        return f"inf (all {identical} identical to the HQ image)"
    text = f"{statistics.fmean(finite):.4f} ± {statistics.pstdev(finite):.4f}"
    return f"{text} over the other {len(finite)} ({identical} identical: inf)" if identical else text


def lower_is_better(metric: str) -> bool:
    """PSNR, SSIM, CLIP-I and the no-reference scores rise with quality; LPIPS and DISTS are distances."""
    spec = metrics.LEARNED_METRICS.get(metric)
    return spec is not None and spec.lower_is_better


class Report:
    """Scores restorations one image at a time and writes a benchmark report into ``out_dir``: ``lq/`` and
    ``restored/`` PNGs, ``metrics.csv`` (one row per image), ``summary.md`` (mean ± population std per metric) and
    ``grid.png`` (LQ | restored | HQ rows for the first ``grid_rows`` images).

    The files are written into a hidden folder beside ``out_dir`` and moved into it by :meth:`finish`, so a report
    that fails midway leaves no half-written ``out_dir``; used as a context manager, a failure removes them.

    The restored image is rounded to 8 bits before it is scored, as SR papers score saved images (BasicSR's
    ``tensor2img``), so the saved PNGs reproduce the scores exactly. PSNR/SSIM use ``crop_border``; learned metrics
    score the whole image.
    """

    def __init__(self, out_dir: str, crop_border: int, learned: dict[str, metrics.Metric] | None = None,
                 grid_rows: int = 16, grid_height: int = 256):
        self.out_dir, self.crop_border, self.learned = out_dir, crop_border, learned or {}
        self.grid_rows, self.grid_height = grid_rows, grid_height
        self.names: list[str] = []
        self.scores: dict[str, list[float]] = {}
        self.grid_cells: list[tuple[list[Image.Image], str]] = []
        self.png_names: set[str] = set()
        parent, base = os.path.split(os.path.abspath(out_dir))
        self.staging = os.path.join(parent, f".{base}.partial-{uuid.uuid4().hex[:8]}")
        for sub in ("lq", "restored"):
            os.makedirs(os.path.join(self.staging, sub))

    def __enter__(self) -> Report:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:
            self.discard()

    def discard(self) -> None:
        """Removes the files written so far (nothing in ``out_dir`` changes)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def add(self, name: str, lq: torch.Tensor, restored: torch.Tensor, hq: torch.Tensor) -> dict[str, float]:
        """Scores one restored image :math:`(1, H, W, 3)` against its HQ image of the same size; the LQ
        :math:`(1, h, w, 3)` may be of any size (it is saved and shown, not scored). Returns the image's scores."""
        for what, image in (("LQ", lq), ("restored", restored), ("HQ", hq)):
            degradation.check_image(image, f"{name}: the {what} image")
            check_finite_image(image, f"{name}: the {what} image")
            if image.shape[0] != 1:
                raise ValueError(f"{name}: the {what} input holds {image.shape[0]} images; add one image at a time.")
        if restored.shape != hq.shape:
            raise ValueError(f"{name}: the restored image is {restored.shape[2]}x{restored.shape[1]} but the HQ "
                             f"image is {hq.shape[2]}x{hq.shape[1]} (width x height); restore to the HQ size (crop "
                             "the HQ images to a multiple of the scale and of 8, or resize the restored image).")
        restored = degradation.quantize(restored.float())
        file_name = self._png_name(name)
        save_image(lq, os.path.join(self.staging, "lq", file_name))
        save_image(restored, os.path.join(self.staging, "restored", file_name))
        values = {k: v.item() for k, v in metrics.fidelity_metrics(restored, hq, self.crop_border).items()}
        values |= {k: fn(restored, hq).item() for k, fn in self.learned.items()}
        self.names.append(name)
        for k, v in values.items():
            self.scores.setdefault(k, []).append(v)
        if len(self.grid_cells) < self.grid_rows:
            cells = [image_to_pil(t[0]).resize((max(1, round(t.shape[2] * self.grid_height / t.shape[1])),
                                                self.grid_height), Image.BICUBIC) for t in (lq, restored, hq)]
            self.grid_cells.append((cells, f"{name}  PSNR-Y {values['psnr_y']:.2f}"))
        return values

    def _png_name(self, name: str) -> str:
        """``<stem>.png`` for the image's file name (``<name>.png`` when another image already has that stem)."""
        base = os.path.basename(name) or "image"
        file_name = os.path.splitext(base)[0] + ".png"
        if file_name in self.png_names:
            file_name = base + ".png"
        self.png_names.add(file_name)
        return file_name

    def finish(self, title: str, settings: str) -> tuple[BenchmarkResult, str, Image.Image]:
        """Writes ``metrics.csv``, ``summary.md`` and ``grid.png`` and moves the report into ``out_dir``; returns the
        result, the summary and the grid."""
        if not self.names:
            raise ValueError("the benchmark has no images to report on.")
        result = BenchmarkResult(self.names, self.scores)
        _write_csv(result, os.path.join(self.staging, "metrics.csv"))
        summary = summary_table(result, title, settings)
        with open(os.path.join(self.staging, "summary.md"), "w", encoding="utf-8") as f:
            f.write(summary)
        grid = comparison_grid(self.grid_cells, self.grid_height)
        grid.save(os.path.join(self.staging, "grid.png"))
        self._publish()
        return result, summary, grid

    def _publish(self) -> None:
        """The staged report becomes ``out_dir``; into an existing ``out_dir`` (the CLI's, named by the user) its
        files are moved one by one, replacing files of the same name."""
        if not os.path.exists(self.out_dir):
            os.rename(self.staging, self.out_dir)
            return
        for folder, _, files in os.walk(self.staging):
            target = os.path.join(self.out_dir, os.path.relpath(folder, self.staging))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.replace(os.path.join(folder, name), os.path.join(target, name))
        self.discard()


def run_benchmark(hq_dir: str, out_dir: str, preset: str, restore: Restore, seed: int = 0,
                  crop_border: int | None = None, resize_back: bool = False, learned: tuple[str, ...] = (),
                  iqa_dir: str | None = None, grid_rows: int = 16, grid_height: int = 256) -> BenchmarkResult:
    """Degrades every image in ``hq_dir`` (image ``i`` in name order with seed ``seed + i``), restores it and scores
    the result against the HQ image, writing the :class:`Report` files to ``out_dir``.

    The HQ image is first cropped at the bottom and right to a multiple of the preset's scale, so LQ × scale is the
    HQ size. ``crop_border`` defaults to the scale (the SR convention; 0 for scale 1). ``restore`` must return the HQ
    size: give it the LQ at HQ size with ``resize_back``, or upsample inside it.
    """
    scale = degradation.get_preset(preset).scale
    if crop_border is None:
        crop_border = scale if scale > 1 else 0
    scorers = {name: metrics.load_learned_metric(name, iqa_dir) for name in learned}
    names = image_names(hq_dir, f"HQ folder {hq_dir!r}")
    with Report(out_dir, crop_border, scorers, grid_rows, grid_height) as report:
        for i, name in enumerate(names):
            hq = crop_to_multiple(read_image(os.path.join(hq_dir, name))[None], scale)
            lq = degradation.degrade(hq, preset, seed + i, resize_back)
            restored = restore(lq)
            if restored.shape != hq.shape:
                raise ValueError(f"{name}: the restore function returned {tuple(restored.shape)} but the HQ image "
                                 f"is {tuple(hq.shape)}; it must return the HQ size (use resize_back to feed it the "
                                 "LQ at HQ size, or the 'bicubic' baseline).")
            report.add(name, lq, restored, hq)
        settings = (f"restore: `{getattr(restore, '__qualname__', repr(restore))}`, images: {len(names)}, "
                    f"seed: {seed}, crop border: {crop_border}")
        return report.finish(f"Benchmark: {degradation.describe(preset)}", settings)[0]


def _write_csv(result: BenchmarkResult, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *result.scores])
        for i, name in enumerate(result.names):
            writer.writerow([name, *(f"{v[i]:.6f}" for v in result.scores.values())])


def summary_table(result: BenchmarkResult, title: str, settings: str) -> str:
    """A Markdown report: the title and settings, then one row per metric with mean ± std and its direction."""
    lines = [f"# {title}", "", settings, "", "| metric | mean ± std | better |", "| --- | --- | --- |"]
    lines += [f"| {k} | {text} | {'lower' if lower_is_better(k) else 'higher'} |"
              for k, text in result.summary().items()]
    identical = [name for i, name in enumerate(result.names) if math.isinf(result.scores["psnr_y"][i])]
    if identical:
        lines += ["", f"PSNR inf: {len(identical)} restoration(s) identical to the HQ image "
                      f"({', '.join(identical[:8])}{' …' if len(identical) > 8 else ''})."]
    return "\n".join(lines) + "\n"


def comparison_grid(rows: list[tuple[list[Image.Image], str]], height: int) -> Image.Image:
    """Side-by-side rows of cells (LQ | restored | HQ, each ``height`` pixels high), labelled with the row's
    caption."""
    width = max(sum(c.width for c in cells) for cells, _ in rows)
    grid = Image.new("RGB", (width, height * len(rows)))
    draw = ImageDraw.Draw(grid)
    for r, (cells, caption) in enumerate(rows):
        x = 0
        for label, cell in zip((f"LQ  {caption}", "restored", "HQ"), cells):
            grid.paste(cell, (x, r * height))
            draw.text((x + 4, r * height + 4), label, fill=(255, 255, 0))
            x += cell.width
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supir.quality.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("hq_dir", help="folder of high-quality images")
    parser.add_argument("out_dir", help="folder for lq/, restored/, metrics.csv, summary.md, grid.png")
    parser.add_argument("--preset", default="sr_x4", choices=list(degradation.DEGRADATION_PRESETS))
    parser.add_argument("--restore", default="bicubic", help="identity, bicubic or module:function")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-border", type=int, default=None, help="default: the preset's scale")
    parser.add_argument("--resize-back", action="store_true", help="give the restore function the LQ at HQ size")
    parser.add_argument("--learned", default="", help=f"comma-separated: {', '.join(metrics.LEARNED_METRICS)}")
    parser.add_argument("--iqa-dir", default=None, help="folder with <metric>/ weight folders (ComfyUI/models/iqa)")
    args = parser.parse_args(argv)
    scale = degradation.get_preset(args.preset).scale
    try:
        result = run_benchmark(args.hq_dir, args.out_dir, args.preset, resolve_restore(args.restore, scale),
                               args.seed, args.crop_border, args.resize_back,
                               tuple(filter(None, args.learned.split(","))), args.iqa_dir)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        parser.error(str(e))
    for k, text in result.summary().items():
        print(f"{k:>10}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
