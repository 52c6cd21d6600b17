"""Colour fix: colour error (CIEDE2000 against the true image) and CPU throughput of every method.

Run from the repository::

    python -m bench.colour_fix quality
    python -m bench.colour_fix speed [--size 4096] [--repeats 3]

**quality**: scikit-image's sample photographs are the true (HQ) images. The reference is what SUPIR's stage-1
image is, the right colours without the detail: the photograph shrunk to a quarter (area), which the fix resizes
back. The "restored" image is the photograph with a drift of one of these kinds:

* *smooth cast*: a colour cloud half the image wide plus a left-right tilt (up to 0.08 of the range), the local
  drift diffusion sampling gives;
* *global cast*: a white-balance and exposure change (per-channel gain and offset);
* *tone*: a gamma of 0.85 on all channels and the saturation raised by a quarter;
* *lost detail*: the smooth cast, with a reference that also lost the photograph's thin dark detail (a 5×5 grey
  closing before shrinking), as a stage-1 image smooths fine texture away; this is where wavelet halos appear.

Each fixed image is compared with the photograph by ΔE00 (``skimage.color.deltaE_ciede2000`` on
``skimage.color.rgb2lab``); the table gives the mean over pixels and the 99th percentile (local errors such as
halos), each averaged over the photographs. About 1 is a just-noticeable difference.

**speed**: each case runs once to warm up, then ``--repeats`` times; the table shows the median. The reference is
either the image's size (SUPIR's stage-1 image next to the sampled output) or a quarter of it (resized inside).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import scipy.ndimage
import skimage.color
import skimage.data
import torch

from supir.image.colour import COLOUR_FIXES, colour_fix
from supir.image.resize import resize_image

PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
CASES = ("smooth cast", "global cast", "tone", "lost detail")


def photograph(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as IMAGE (1, H, W, 3) float64 in [0, 1]."""
    return torch.from_numpy(getattr(skimage.data, name)().copy())[None].double() / 255


def smooth_cast(image: torch.Tensor) -> torch.Tensor:
    _, h, w, _ = image.shape
    yy = torch.linspace(-1, 1, h, dtype=image.dtype).view(1, h, 1, 1)
    xx = torch.linspace(-1, 1, w, dtype=image.dtype).view(1, 1, w, 1)
    cloud = torch.exp(-(yy ** 2 + xx ** 2) / 0.5)
    return image + torch.tensor([0.08, -0.06, 0.05], dtype=image.dtype) * cloud \
        + torch.tensor([-0.02, 0.03, 0.0], dtype=image.dtype) * xx


def global_cast(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor([1.08, 0.95, 0.90], dtype=image.dtype) \
        + torch.tensor([0.03, -0.02, 0.04], dtype=image.dtype)


def tone(image: torch.Tensor) -> torch.Tensor:
    curved = image.clamp(0, 1) ** 0.85
    grey = curved.mean(-1, keepdim=True)
    return grey + 1.25 * (curved - grey)


def case_pair(image: torch.Tensor, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The drifted "restored" image and the stage-1 stand-in (a quarter of the size) of one case."""
    _, h, w, _ = image.shape
    source = image
    if case == "lost detail":
        source = torch.from_numpy(scipy.ndimage.grey_closing(image[0].numpy(), size=(5, 5, 1)))[None]
    drift = {"smooth cast": smooth_cast, "global cast": global_cast, "tone": tone, "lost detail": smooth_cast}[case]
    return drift(image).clamp(0, 1), resize_image(source, h // 4, w // 4, "area")


def delta_e(image: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    return skimage.color.deltaE_ciede2000(skimage.color.rgb2lab(image[0].numpy()),
                                          skimage.color.rgb2lab(truth[0].numpy()))


def quality() -> None:
    methods = ("none", *COLOUR_FIXES)
    scores = {(m, case): [] for m in methods for case in CASES}
    for name in PHOTOGRAPHS:
        truth = photograph(name)
        for case in CASES:
            restored, reference = case_pair(truth, case)
            for method in methods:
                fixed = restored if method == "none" else colour_fix(restored, reference, method)
                error = delta_e(fixed, truth)
                scores[method, case].append((error.mean(), np.percentile(error, 99)))
    print(f"ΔE00 against the true image, mean / 99th percentile over pixels, averaged over {len(PHOTOGRAPHS)} "
          f"photographs ({', '.join(PHOTOGRAPHS)}); float64")
    print("| method | " + " | ".join(CASES) + " |")
    print("| --- |" + " ---: |" * len(CASES))
    for method in methods:
        cells = [f"{np.mean([s[0] for s in scores[method, c]]):.2f} / {np.mean([s[1] for s in scores[method, c]]):.1f}"
                 for c in CASES]
        print(f"| {method} | " + " | ".join(cells) + " |")


def seconds_per_image(image: torch.Tensor, reference: torch.Tensor, method: str, repeats: int) -> float:
    colour_fix(image, reference, method)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        colour_fix(image, reference, method)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(size: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, size, size, 3, generator=g)
    references = {"same size": torch.rand(1, size, size, 3, generator=g),
                  "1/4 size": torch.rand(1, size // 4, size // 4, 3, generator=g)}
    megapixels = size * size / 1e6
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
          f"{size}x{size} RGB float32, median of {repeats}")
    print("| method | reference | s / image | MP / s |")
    print("| --- | --- | ---: | ---: |")
    for method in COLOUR_FIXES:
        for name, reference in references.items():
            seconds = seconds_per_image(image, reference, method, repeats)
            print(f"| {method} | {name} | {seconds:.2f} | {megapixels / seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("quality", "speed"), help="colour error, or throughput")
    parser.add_argument("--size", type=int, default=4096, help="speed: image side in pixels (square RGB float32)")
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed runs per case (median reported)")
    args = parser.parse_args()
    if args.what == "quality":
        quality()
    else:
        speed(args.size, args.repeats)


if __name__ == "__main__":
    main()
