"""Tier 1: tile grids, Gaussian weights, tiled blending and the exact tiled VAE's maths."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_relative, relative_error
from supir_restore.supir.tiling.batching import POOLED_WIDTH, batched, tile_conditioning
from supir_restore.supir.tiling.exact_vae import GroupMoments, tiled_exact, windows
from supir_restore.supir.tiling.grid import (blend_tiles, check_tile_pixels, check_vae_tile, gaussian_weights, tile_grid,
                                             tile_starts)


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


def official_tile_weights(height: int, width: int) -> torch.Tensor:
    """The tile weight map of StableSR's and SUPIR's tiled samplers (from MultiDiffusion): variance 0.01 in units
    of the tile, x centred at (W - 1) / 2, y at H / 2, as an outer product of per-axis densities."""
    var = 0.01
    x = [math.exp(-(i - (width - 1) / 2) ** 2 / width ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
         for i in range(width)]
    y = [math.exp(-(i - height / 2) ** 2 / height ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
         for i in range(height)]
    return torch.tensor(y, dtype=torch.float64)[:, None] * torch.tensor(x, dtype=torch.float64)[None, :]


@pytest.mark.parametrize("size", [(16, 16), (128, 128), (40, 72)])
def test_official_weights_are_the_official_samplers_up_to_scale(size):
    ours, theirs = gaussian_weights(*size).double(), official_tile_weights(*size)
    assert_close_relative(ours / ours.max(), theirs / theirs.max(), 1e-5)  # float32 weights (ours) vs float64


@pytest.mark.parametrize("tile,stride", [(128, 64), (16, 8)])
def test_the_official_half_pixel_shifts_overlap_blending_by_exp_50_stride_over_n2(tile, stride):
    """Two tiles one stride apart down the image: in their overlap, the upper tile's weight relative to the lower
    one's is exp(50 stride / N^2) times the symmetric centring's (x1.22 at 128/64, x4.8 at 16/8)."""
    rows = {c: gaussian_weights(tile, 1, centring=c)[:, 0].double() for c in ("official", "symmetric")}
    overlap = torch.arange(stride, tile)
    relative = {c: w[overlap] / w[overlap - stride] for c, w in rows.items()}
    # ratios of float32 weights down to exp(-50) of the peak: float32 rounding, relative to each ratio
    torch.testing.assert_close(relative["official"] / relative["symmetric"],
                               torch.full((tile - stride,), math.exp(50 * stride / tile ** 2), dtype=torch.float64),
                               rtol=1e-4, atol=0)


def test_blending_uses_the_chosen_weights():
    x = torch.zeros(1, 1, 24, 8)
    tiles = tile_grid(24, 8, 16, 8)
    ramp = torch.arange(24.0)[None, None, :, None].expand(1, 1, 24, 8)
    denoise = lambda xt, group: torch.cat([ramp[:, :, t:b, l:r] + 100 * i for i, (t, b, l, r) in enumerate(group)])
    official, symmetric = (blend_tiles(denoise, x, tiles, 2, weights=c) for c in ("official", "symmetric"))
    assert relative_error(official, symmetric) > 1e-3
    with pytest.raises(ValueError, match="tile weights 'flat' is not one of official, symmetric"):
        blend_tiles(denoise, x, tiles, 2, weights="flat")


def test_gaussian_weights_have_std_a_tenth_of_the_tile():
    w = gaussian_weights(1, 200)[0].double()
    i = torch.arange(200, dtype=torch.float64)
    mean = (w * i).sum() / w.sum()
    std = ((w * (i - mean) ** 2).sum() / w.sum()).sqrt()
    assert float(mean) == pytest.approx(99.5) and float(std) == pytest.approx(20.0, rel=1e-3)
    w2 = gaussian_weights(64, 48, centring="symmetric")
    assert w2.dtype == torch.float32 and w2.shape == (64, 48)
    assert_close_relative(w2, w2.flip(0), 1e-6)  # symmetric up to float32 rounding of (i - centre)^2
    assert_close_relative(w2, w2.flip(1), 1e-6)
    edge_to_centre = math.exp(-(31.5 ** 2 - 0.5 ** 2) / (2 * 6.4 ** 2))  # rows 0 and 31, centre 31.5
    # a ratio of float32 weights 1e-5 apart in size: float32 rounding, relative to the ratio
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
    # weights summing to 1 in the dtype: its rounding (bfloat16 keeps 8 bits, 2^-8 per op)
    assert_close_relative(out, denoiser(x), 2e-2 if dtype == torch.bfloat16 else 1e-5)
    assert out.dtype == dtype and max(calls) == tile_batch_size


def test_each_tile_sees_its_own_region():
    reference = torch.randn(1, 4, 40, 52, generator=torch.Generator().manual_seed(1))
    tiles = tile_grid(40, 52, 16, 12, "even")

    def denoiser(x_tiles, group):
        return torch.cat([reference[:, :, a:b, c:d] for a, b, c, d in group])
    # each pixel's tiles agree, so the blend is w1 x + w2 x over w1 + w2: float32 rounding only
    assert_close_relative(blend_tiles(denoiser, torch.zeros_like(reference), tiles, 2), reference, 1e-5)


def test_scaled_blend_places_each_tile_at_its_upscaled_region():
    """A pointwise 'decoder' with 8x nearest upscaling and 3 output channels (a VAE decode's shapes): tiled and
    untiled agree, and the output is at the predictions' size and channel count."""
    x = torch.randn(2, 4, 13, 21, generator=torch.Generator().manual_seed(2))

    def decode(t):
        return F.interpolate(torch.tanh(t[:, :3] * t[:, 3:]), scale_factor=8, mode="nearest")
    out = blend_tiles(lambda xt, group: decode(xt), x, tile_grid(13, 21, 8, 6), 2, weights="symmetric", scale=8)
    assert out.shape == (2, 3, 104, 168)
    assert_close_relative(out, decode(x), 1e-5)  # as above


# --- the exact tiled VAE's maths (supir/tiling/exact_vae.py) ---

def test_windows_partition_the_image_into_cores():
    tiles = windows(40, 100, 32, 8)
    covered = torch.zeros(40, 100, dtype=torch.int64)
    for tile in tiles:
        t, b, l, r = tile.core
        covered[t:b, l:r] += 1
        wt, wb, wl, wr = tile.window
        assert (wt, wl) == (max(0, t - 8), max(0, l - 8)) and (wb, wr) == (min(40, b + 8), min(100, r + 8))
    assert (covered == 1).all() and len(tiles) == 2 * 4


def test_group_moments_merged_over_tiles_normalise_like_group_norm():
    x = torch.randn(2, 8, 10, 100, generator=torch.Generator().manual_seed(0)) * 3 + 5
    norm = torch.nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    moments = GroupMoments()
    for part in x.split([7, 60, 33], dim=-1):  # three cores of different sizes
        moments.add(part.reshape(2, 4, -1))
    scale, shift = moments.affine(norm)
    assert moments.count == 2 * 10 * 100
    with torch.no_grad():
        # moments summed in three parts vs GroupNorm's kernel: float32 rounding
        assert_close_relative(x * scale[..., None, None] + shift[..., None, None], norm(x), 1e-5)


class ToyAttention(torch.nn.Module):
    """A VAE-style self-attention block: x + proj_out(attention(q, k, v)) over every position."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = torch.nn.GroupNorm(2, c)
        self.q, self.k, self.v, self.proj_out = (torch.nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (self.q(h), self.k(h), self.v(h)))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


def test_tiled_exact_equals_the_whole_image_forward():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), ToyAttention(8),
                              torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.rand(2, 3, 40, 72) * torch.linspace(0.2, 3, 72)  # uneven statistics across the image
    calls = []
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_exact(net, net, x, 16, 2, torch.zeros(1, 3, 8, 8), (ToyAttention,),
                            progress=lambda done, total: calls.append((done, total)))
        per_tile_stats = torch.cat([torch.cat([net(x[:, :, r:r + 16, c:c + 16]) for c in range(0, 72, 16)], -1)
                                    for r in range(0, 40, 16)], -2)
    assert_close_relative(tiled, whole, 1e-5)  # the same float32 ops on windows, whole-image statistics
    assert relative_error(per_tile_stats, whole) > 0.05  # naive tiles are far off
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))


# --- tile batching (supir/tiling/batching.py) ---

def test_batched_repeats_per_sample_inputs_tile_major():
    x = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(batched(x, batch=2, k=3), torch.cat([x, x, x]))
    assert batched(x, batch=4, k=3) is x and batched("label", 2, 3) == "label" and batched(x, 2, 1) is x


def test_tile_captions_go_to_the_cond_rows_of_their_tiles():
    tiles = [(0, 8, 0, 8), (0, 8, 8, 16), (8, 16, 0, 8)]
    batch, chunks = 4, [0, 1]  # two cond rows, then two uncond rows, per tile
    group = [tiles[2], tiles[0]]
    context = torch.zeros(batch * len(group), 77, 16)
    y = torch.zeros(batch * len(group), POOLED_WIDTH + 8)
    tile_context = torch.stack([torch.full((154, 16), float(i + 1)) for i in range(3)])
    tile_pooled = torch.stack([torch.full((POOLED_WIDTH,), float(i + 1)) for i in range(3)])
    out, out_y = tile_conditioning(context, y, tile_context, tile_pooled, group, tiles, chunks, batch)
    assert out.shape == (8, 154, 16)  # token counts brought to a common multiple
    expected = torch.tensor([3, 3, 0, 0, 1, 1, 0, 0], dtype=torch.float32)  # tile 2's caption, then tile 0's
    assert torch.equal(out[:, 0, 0], expected) and torch.equal(out_y[:, 0], expected)
    assert (out_y[:, POOLED_WIDTH:] == 0).all() and (context == 0).all()  # size part untouched, inputs not changed


def test_tile_size_and_stride_are_checked_in_the_pixels_users_type():
    check_tile_pixels(1024, 512)
    check_tile_pixels(64, 8)
    with pytest.raises(ValueError, match=r"^tile_stride \(1024 px\) must be between 8 px and tile_size \(512 px\)"):
        check_tile_pixels(512, 1024)
    with pytest.raises(ValueError, match=r"^tile_stride \(4 px\)"):
        check_tile_pixels(512, 4)
    for small in (1, 8, 32, 63):  # a UNet tile of fewer than 8 latent pixels: thousands of tiles, or a shape error
        with pytest.raises(ValueError, match=rf"^tile_size \({small} px\) must be at least 64 px"):
            check_tile_pixels(small, 8)


@pytest.mark.parametrize("tile_size", [1, 2, 8, 32, 63, -64])
def test_a_vae_tile_below_64_px_is_refused_naming_the_input(tile_size):
    with pytest.raises(ValueError, match=rf"^vae_tile_size \({tile_size} px\) must be 0 \(the whole image at once\) "
                                         "or at least 64 px"):
        check_vae_tile(tile_size, "vae_tile_size")


@pytest.mark.parametrize("tile_size", [0, 64, 100, 512])
def test_a_vae_tile_of_0_or_at_least_64_px_is_taken(tile_size):
    check_vae_tile(tile_size)
