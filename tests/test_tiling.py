"""Tier 1: tile grids, Gaussian weights and tiled blending."""
import math

import pytest
import torch

from supir_restore.supir.tiling import blend_tiles, gaussian_weights, tile_grid, tile_starts


@pytest.mark.parametrize("grid", ["snapped", "even"])
@pytest.mark.parametrize("size,tile,stride", [(100, 32, 16), (128, 128, 64), (70, 128, 64), (97, 40, 40), (33, 8, 3)])
def test_grids_cover_every_pixel(grid, size, tile, stride):
    starts = tile_starts(size, tile, stride, grid)
    length = min(tile, size)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s:s + length] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == size - length
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_snapped_grid_adds_a_last_tile_flush_with_the_border():
    assert tile_starts(100, 32, 16, "snapped") == [0, 16, 32, 48, 64, 68]
    assert tile_starts(96, 32, 16, "snapped") == [0, 16, 32, 48, 64]


def test_even_grid_spreads_the_fewest_tiles_evenly():
    starts = tile_starts(100, 32, 16, "even")
    assert len(starts) == math.ceil((100 - 32) / 16) + 1
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) - min(gaps) <= 1


def test_tile_larger_than_latent_is_one_tile():
    assert tile_grid(20, 30, 128, 64) == [(0, 20, 0, 30)]
    assert tile_grid(20, 300, 128, 64)[0] == (0, 20, 0, 128)


def test_bad_tiling_is_refused():
    with pytest.raises(ValueError, match="at most the tile size"):
        tile_starts(100, 32, 40)
    with pytest.raises(ValueError, match="grid 'diagonal'"):
        tile_starts(100, 32, 16, "diagonal")


def test_gaussian_weights_have_std_a_tenth_of_the_tile():
    w = gaussian_weights(1, 200)[0].double()
    i = torch.arange(200, dtype=torch.float64)
    mean = (w * i).sum() / w.sum()
    std = ((w * (i - mean) ** 2).sum() / w.sum()).sqrt()
    assert float(mean) == pytest.approx(99.5) and float(std) == pytest.approx(20.0, rel=1e-3)
    w2 = gaussian_weights(64, 48)
    assert w2.dtype == torch.float32 and w2.shape == (64, 48)
    assert torch.allclose(w2, w2.flip(0)) and torch.allclose(w2, w2.flip(1))
    edge_to_centre = math.exp(-(31.5 ** 2 - 0.5 ** 2) / (2 * 6.4 ** 2))  # rows 0 and 31, centre 31.5
    torch.testing.assert_close(w2[0] / w2[31], torch.full((48,), edge_to_centre), rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tile_batch_size", [1, 3])
def test_pointwise_denoiser_tiled_equals_untiled(dtype, tile_batch_size):
    x = torch.randn(2, 4, 45, 70, generator=torch.Generator().manual_seed(0)).to(dtype)

    def denoiser(t):
        return 0.3 * t + 0.1 * t ** 2 - 1.0  # translation-equivariant, no spatial support

    calls = []
    out = blend_tiles(lambda xt, group: calls.append(len(group)) or denoiser(xt), x,
                      tile_grid(45, 70, 16, 8), tile_batch_size)
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(out, denoiser(x), **tol)
    assert out.dtype == dtype and max(calls) == tile_batch_size


def test_each_tile_sees_its_own_region():
    reference = torch.randn(1, 4, 40, 52, generator=torch.Generator().manual_seed(1))
    tiles = tile_grid(40, 52, 16, 12, "even")

    def denoiser(x_tiles, group):
        return torch.cat([reference[:, :, a:b, c:d] for a, b, c, d in group])
    torch.testing.assert_close(blend_tiles(denoiser, torch.zeros_like(reference), tiles, 2), reference)
