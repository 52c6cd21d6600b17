"""Resize policy: target and sampling sizes (rounding, snapping, limits) and the IMAGE resize filters."""
import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from helpers import assert_close_relative
from supir_restore.supir.image import resize as r

SIDES = [2, 7, 31, 32, 33, 63, 95, 96, 97, 333, 517, 1000, 1023]
SCALES = [0.25, 0.5, 1.0, 1.5, 2.0, 2.37, 4.0]


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -------------------------------------------------------------------------------------------------- size arithmetic

def test_target_size_rounds_side_times_scale_to_the_nearest_pixel_halves_up():
    assert r.scaled_size(333, 517, 1.5) == (500, 776)  # 499.5 and 775.5 round up
    assert r.scaled_size(512, 768, 2.0) == (1024, 1536)
    assert r.scaled_size(3, 5, 0.5) == (2, 3)  # 1.5 -> 2 and 2.5 -> 3, not banker's rounding
    for side in SIDES:
        for scale in SCALES:
            h, w = r.scaled_size(side, side + 1, scale)
            assert abs(h - side * scale) <= 0.5 and abs(w - (side + 1) * scale) <= 0.5
            assert h >= 1 and w >= 1


@pytest.mark.parametrize("multiple", [8, 32, 64])
def test_snap_rounds_to_the_nearest_multiple_halves_up_and_never_to_zero(multiple):
    for side in range(1, 4 * multiple):
        snapped = r.snap(side, multiple)
        assert snapped % multiple == 0 and snapped >= multiple
        nearest = min(max(multiple, snapped - multiple), snapped + multiple, snapped, key=lambda s: abs(s - side))
        assert abs(snapped - side) == abs(nearest - side)  # no other multiple is closer
        if side >= multiple // 2:
            assert abs(snapped - side) <= multiple // 2
    assert r.snap(multiple // 2, multiple) == multiple  # a tie rounds up
    assert r.snap(multiple + multiple // 2 - 1, multiple) == multiple
    assert r.snap(1, multiple) == multiple


def test_sampling_size_is_the_snapped_target_size():
    assert r.sampling_size(333, 517, 1.5, 64) == (512, 768)
    assert r.sampling_size(333, 517, 1.5, 32) == (512, 768)
    assert r.sampling_size(333, 517, 1.5, 8) == (504, 776)
    assert r.sampling_size(10, 700, 1.0, 64) == (64, 704)
    for side in SIDES:
        for scale in SCALES:
            for multiple in r.MULTIPLES:
                target = r.scaled_size(side, 2 * side, scale)
                assert r.sampling_size(side, 2 * side, scale, multiple) == tuple(r.snap(s, multiple) for s in target)


def test_bad_scales_multiples_and_sizes_raise_clear_errors():
    for scale in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale factor must be a positive number"):
            r.scaled_size(100, 100, scale)
    with pytest.raises(ValueError, match=r"300-pixel height into 0 pixels; use a scale of at least 0\.001667"):
        r.scaled_size(300, 5000, 0.001)
    assert r.scaled_size(300, 5000, 0.5 / 300) == (1, 8)
    with pytest.raises(ValueError, match="sides must be between 1 and 16384"):
        r.scaled_size(4097, 1000, 4.0)
    assert r.scaled_size(4096, 1000, 4.0) == (16384, 4000)
    for multiple in (0, -8, 7, 12, 100):
        with pytest.raises(ValueError, match="positive multiple of 8"):
            r.snap(100, multiple)
    with pytest.raises(ValueError, match="sampling height .* multiple of 24.*between 1 and 16384"):
        r.sampling_size(16384, 64, 1.0, 24)  # 16384 / 24 = 682.7 rounds up to 16392
    with pytest.raises(ValueError, match="height to resize to is 0 pixels"):
        r.resize_image(rand(1, 8, 8, 3), 0, 8)
    with pytest.raises(ValueError, match="unknown resize method 'nearest'"):
        r.resize_image(rand(1, 8, 8, 3), 4, 4, "nearest")
    with pytest.raises(ValueError, match=r"IMAGE batch \[B, H, W, C\]"):
        r.resize_image(rand(8, 8, 3), 4, 4)


# --------------------------------------------------------------------------------------------------------- resizing

@pytest.mark.parametrize("method", r.RESIZE_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_resize_gives_the_exact_size_dtype_and_range_for_any_channel_count(method, dtype):
    for channels in (1, 3, 4):
        image = rand(2, 33, 47, channels, seed=channels).to(dtype)
        for h, w in ((67, 95), (17, 23), (33, 100)):
            out = r.resize_image(image, h, w, method)
            assert out.shape == (2, h, w, channels) and out.dtype == dtype
            assert out.min() >= 0 and out.max() <= 1
    assert r.resize_image(image, 33, 47, method) is image
    flat = torch.full((1, 20, 30, 3), 0.4, dtype=dtype)
    # filter taps summing to 1, in float32 (bfloat16 is resized in float32 and rounds back to 0.4 exactly)
    assert_close_relative(r.resize_image(flat, 45, 61, method), torch.full((1, 45, 61, 3), 0.4, dtype=dtype),
                          1e-5 if dtype != torch.bfloat16 else 0)


def pillow_float(rgb, size, pil_filter):
    """Pillow's float ("F") resize of each plane of an 8-bit RGB array, clamped."""
    planes = [Image.fromarray(np.ascontiguousarray(rgb[..., k], dtype=np.float32) / 255).resize(size[::-1], pil_filter)
              for k in range(3)]
    return np.clip(np.stack([np.asarray(p) for p in planes], axis=-1), 0, 1)


@pytest.mark.parametrize("method, pil_filter", [("bicubic", Image.Resampling.BICUBIC),
                                                ("bilinear", Image.Resampling.BILINEAR)])
@pytest.mark.parametrize("size", [(128, 171), (512, 684)])
def test_bicubic_and_bilinear_match_pillow_when_shrinking_and_enlarging(method, pil_filter, size):
    rgb = skimage.data.coffee()[::2, ::2].copy()  # (200, 300, 3)
    out = r.resize_image(torch.from_numpy(rgb)[None].float() / 255, *size, method)[0].numpy()
    # Pillow's float path keeps its taps in float32 too, computed its own way: float32 rounding of values up to 1
    assert_close_relative(out, pillow_float(rgb, size, pil_filter), 2e-4)


@pytest.mark.parametrize("size", [(128, 171), (512, 684)])
def test_lanczos_matches_pillows_8_bit_lanczos_without_its_rounding(size):
    rgb = skimage.data.coffee()[::2, ::2].copy()
    out = r.resize_image(torch.from_numpy(rgb)[None].float() / 255, *size, "lanczos")[0].numpy()
    expected = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.Resampling.LANCZOS)) / 255
    diff = np.abs(out - expected)
    # Pillow's 8-bit path rounds, and clips between its two passes (visible only at overshooting edges):
    # measured mean 0.30/255 and 0.1 % of pixels beyond 1.5/255
    assert diff.mean() < 0.4 / 255 and (diff > 1.5 / 255).mean() < 0.005
    assert np.abs(out * 255 - np.round(out * 255)).max() > 0.4  # not on the 8-bit grid


def test_area_averages_blocks_when_shrinking_by_an_integer_factor():
    image = rand(2, 30, 42, 3, seed=5, dtype=torch.float64)
    blocks = image.reshape(2, 10, 3, 14, 3, 3).mean(dim=(2, 4))
    assert_close_relative(r.resize_image(image, 10, 14, "area"), blocks, 1e-12)  # float64 means of 9 pixels


@pytest.mark.parametrize("height, width", [(333, 517), (7, 1001), (1, 1), (64, 64)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.37])
def test_sampling_size_and_back_gives_exactly_the_target_size(height, width, scale):
    image = rand(1, height, width, 3, seed=6)
    target = r.scaled_size(height, width, scale)
    sampling = r.sampling_size(height, width, scale, 64)
    resized = r.resize_image(image, *sampling, "lanczos")
    assert resized.shape[1:3] == sampling and all(s % 64 == 0 for s in sampling)
    assert r.resize_image(resized, *target, "lanczos").shape[1:3] == target
