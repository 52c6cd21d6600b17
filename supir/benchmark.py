"""Benchmark: degrade a folder of HQ images with a preset, restore them, score them, and write a report.

Run from the repository (or, inside ComfyUI's ``custom_nodes``, as ``python -m supir_restore.supir.benchmark``)::

    python -m supir.benchmark HQ_DIR OUT_DIR --preset sr_x4 --restore bicubic

``--restore`` takes ``identity``, ``bicubic`` or ``module:function`` naming any Python callable IMAGE -> IMAGE.
OUT_DIR receives ``lq/`` and ``restored/`` PNGs, ``metrics.csv`` (one row per image), ``summary.md`` (mean ± std
per metric) and ``grid.png`` (LQ | restored | HQ rows).
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image, ImageDraw

from . import degradation, metrics
from .degradation import image_to_pil, pil_to_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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


def load_image(path: str) -> torch.Tensor:
    """An image file -> IMAGE :math:`(1, H, W, 3)` float32 (alpha dropped, grayscale expanded)."""
    with Image.open(path) as im:
        return pil_to_image(im)[None]


def save_image(image: torch.Tensor, path: str) -> None:
    """IMAGE :math:`(1, H, W, 3)` -> 8-bit PNG."""
    image_to_pil(image[0]).save(path)


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ValueError(f"HQ folder {folder!r} does not exist.")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}.")
    return names


@dataclass
class BenchmarkResult:
    names: list[str]
    scores: dict[str, list[float]]  # metric -> one value per image, in ``names`` order

    def summary(self) -> dict[str, tuple[float, float]]:
        """metric -> (mean, population standard deviation) over the images."""
        return {k: (statistics.fmean(v), statistics.pstdev(v)) for k, v in self.scores.items()}


def run_benchmark(hq_dir: str, out_dir: str, preset: str, restore: Restore, seed: int = 0,
                  crop_border: int | None = None, resize_back: bool = False, learned: tuple[str, ...] = (),
                  iqa_dir: str | None = None, grid_rows: int = 16, grid_height: int = 256) -> BenchmarkResult:
    """Degrades every image in ``hq_dir`` (image ``i`` in name order with seed ``seed + i``), restores it and scores
    the result against the HQ image, writing the report files to ``out_dir``.

    The HQ image is first cropped at the bottom and right to a multiple of the preset's scale, so LQ × scale is the
    HQ size. ``crop_border`` defaults to the scale (the SR convention; 0 for scale 1). ``restore`` must return the HQ
    size: give it the LQ at HQ size with ``resize_back``, or upsample inside it.
    """
    scale = degradation.get_preset(preset).scale
    if crop_border is None:
        crop_border = scale if scale > 1 else 0
    scorers = {name: metrics.load_learned_metric(name, iqa_dir) for name in learned}
    names = list_images(hq_dir)
    for sub in ("lq", "restored"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    scores: dict[str, list[float]] = {}
    rows = []
    for i, name in enumerate(names):
        hq = load_image(os.path.join(hq_dir, name))
        hq = hq[:, :hq.shape[1] // scale * scale, :hq.shape[2] // scale * scale]
        lq = degradation.degrade(hq, preset, seed + i, resize_back)
        restored = restore(lq)
        if restored.shape != hq.shape:
            raise ValueError(f"{name}: the restore function returned {tuple(restored.shape)} but the HQ image is "
                             f"{tuple(hq.shape)}; it must return the HQ size (use resize_back to feed it the LQ at "
                             "HQ size, or the 'bicubic' baseline).")
        restored = restored.clamp(0, 1).float()
        stem = os.path.splitext(name)[0]
        save_image(lq, os.path.join(out_dir, "lq", stem + ".png"))
        save_image(restored, os.path.join(out_dir, "restored", stem + ".png"))
        values = {k: v.item() for k, v in metrics.fidelity_metrics(restored, hq, crop_border).items()}
        values |= {k: fn(restored, hq).item() for k, fn in scorers.items()}
        for k, v in values.items():
            scores.setdefault(k, []).append(v)
        if i < grid_rows:
            rows.append((lq, restored, hq, f"{name}  PSNR-Y {values['psnr_y']:.2f}"))
    result = BenchmarkResult(names, scores)
    _write_csv(result, os.path.join(out_dir, "metrics.csv"))
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_table(result, preset, restore, seed, crop_border))
    comparison_grid(rows, grid_height).save(os.path.join(out_dir, "grid.png"))
    return result


def _write_csv(result: BenchmarkResult, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *result.scores])
        for i, name in enumerate(result.names):
            writer.writerow([name, *(f"{v[i]:.6f}" for v in result.scores.values())])


def summary_table(result: BenchmarkResult, preset: str, restore: Restore, seed: int, crop_border: int) -> str:
    """A Markdown report: the settings, then one row per metric with mean ± std."""
    lines = [f"# Benchmark: {degradation.describe(preset)}", "",
             f"restore: `{getattr(restore, '__qualname__', repr(restore))}`, images: {len(result.names)}, "
             f"seed: {seed}, crop border: {crop_border}", "",
             "| metric | mean ± std |", "| --- | --- |"]
    lines += [f"| {k} | {mean:.4f} ± {std:.4f} |" for k, (mean, std) in result.summary().items()]
    return "\n".join(lines) + "\n"


def comparison_grid(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]], height: int) -> Image.Image:
    """Side-by-side rows LQ | restored | HQ, each cell ``height`` pixels high, labelled with the row's caption."""
    cells = [[image_to_pil(t[0]).resize((max(1, round(t.shape[2] * height / t.shape[1])), height), Image.BICUBIC)
              for t in row[:3]] for row in rows]
    width = max(sum(c.width for c in r) for r in cells)
    grid = Image.new("RGB", (width, height * len(rows)))
    draw = ImageDraw.Draw(grid)
    for r, (row, caption) in enumerate(zip(cells, (row[3] for row in rows))):
        x = 0
        for label, cell in zip((f"LQ  {caption}", "restored", "HQ"), row):
            grid.paste(cell, (x, r * height))
            draw.text((x + 4, r * height + 4), label, fill=(255, 255, 0))
            x += cell.width
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supir.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("hq_dir", help="folder of high-quality images")
    parser.add_argument("out_dir", help="folder for lq/, restored/, metrics.csv, summary.md, grid.png")
    parser.add_argument("--preset", default="sr_x4", choices=list(degradation.PRESETS))
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
    for k, (mean, std) in result.summary().items():
        print(f"{k:>10}: {mean:.4f} ± {std:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
