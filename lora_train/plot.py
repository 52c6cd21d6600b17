"""The loss curve as an IMAGE (Pillow drawing; no plotting library needed)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

MARGIN = 40


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve_image(losses: list[float], width: int = 768, height: int = 384) -> torch.Tensor:
    """Per-step losses (grey) and their moving average (blue) as IMAGE :math:`(1, height, width, 3)`."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN + 20, MARGIN // 2, width - MARGIN // 2, height - MARGIN
    draw.rectangle((left, top, right, bottom), outline="black")
    if losses:
        lo, hi = min(losses), max(losses)
        span = hi - lo or 1.0

        def xy(i: int, v: float) -> tuple[float, float]:
            x = left + (right - left) * (i / max(len(losses) - 1, 1))
            return x, bottom - (bottom - top) * (v - lo) / span

        smooth = moving_average(losses, max(1, len(losses) // 20))
        for series, colour in ((losses, (170, 170, 170)), (smooth, (30, 90, 200))):
            points = [xy(i, v) for i, v in enumerate(series)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            else:
                draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
        draw.text((4, top), f"{hi:.4g}", fill="black")
        draw.text((4, bottom - 10), f"{lo:.4g}", fill="black")
        draw.text((left, bottom + 6), "step 1", fill="black")
        draw.text((right - 70, bottom + 6), f"step {len(losses)}", fill="black")
    draw.text((left + 6, top + 4), "training loss (ε-MSE); blue: moving average", fill="black")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
