"""Colour-fix throughput on the CPU: seconds per image and megapixels per second, wavelet and AdaIN.

Run from the repository::

    python -m bench.colour_fix [--size 4096] [--repeats 3]

Each case runs once to warm up, then ``--repeats`` times; the table shows the median. The reference is either the
image's size (SUPIR's stage-1 image next to the sampled output) or a quarter of it (resized inside the fix).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from supir.image.colour import colour_fix


def seconds_per_image(image: torch.Tensor, reference: torch.Tensor, method: str, repeats: int) -> float:
    colour_fix(image, reference, method)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        colour_fix(image, reference, method)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="image side in pixels (square RGB float32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, args.size, args.size, 3, generator=g)
    references = {"same size": torch.rand(1, args.size, args.size, 3, generator=g),
                  "1/4 size": torch.rand(1, args.size // 4, args.size // 4, 3, generator=g)}
    megapixels = args.size * args.size / 1e6
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"{args.size}x{args.size} RGB float32, median of {args.repeats}")
    print("| method | reference | s / image | MP / s |")
    print("| --- | --- | ---: | ---: |")
    for method in ("wavelet", "adain"):
        for name, reference in references.items():
            seconds = seconds_per_image(image, reference, method, args.repeats)
            print(f"| {method} | {name} | {seconds:.2f} | {megapixels / seconds:.1f} |")


if __name__ == "__main__":
    main()
