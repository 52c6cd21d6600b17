"""Tier 1: the memory model's arithmetic (ComfyUI's estimates, the control's held features) and the automatic
tile choice against memory budgets."""
import pytest
import torch

from supir_restore.supir.stablesr.encoder import EncoderConfig, TimeAwareEncoder
from supir_restore.supir.tiling.memory import (COMFY_MARGIN, MIB, SDXL_LEVELS, STABLESR_SD2, SUPIR_SDXL, TILE_STEP,
                                               choose_tile, encoder_feature_channels, held_channels,
                                               sampling_call_bytes, tile_candidates, unet_call_bytes,
                                               vae_decode_bytes, vae_encode_bytes)
from helpers import TINY_UNET, tiny_control

GIB = 1024 ** 3


def test_held_channels_count_the_sdxl_encoder_half_block_by_block():
    # conv_in 320, two ResBlocks 320, Downsample 320 at 1/4, two 640 at 1/4, Downsample 640 at 1/16, two 1280 at
    # 1/16, the middle block 1280 at 1/16
    assert held_channels(SDXL_LEVELS) == 320 + 2 * 320 + 320 / 4 + 2 * 640 / 4 + 640 / 16 + 3 * 1280 / 16 == 1640
    assert SUPIR_SDXL.held_channels == 1640
    assert STABLESR_SD2.held_channels == encoder_feature_channels(256, 4) == 256 + 64 + 16 + 4 == 340


@torch.no_grad()
def test_the_running_trunk_holds_the_counted_features():
    # The SUPIR trunk's outputs (kept for the UNet's adaptors) counted on a running tiny trunk: channels summed
    # over its outputs, each weighted by its share of the latent's pixels, equal held_channels of its widths.
    trunk = tiny_control().control_model.eval()
    h, w = 16, 24
    x, hint = torch.randn(1, 4, h, w), torch.randn(1, 4, h, w)
    feats = trunk(x, hint, torch.tensor([500.0]), torch.randn(1, 7, TINY_UNET["context_dim"]),
                  torch.randn(1, TINY_UNET["adm_in_channels"]))
    widths = tuple(TINY_UNET["model_channels"] * m for m in TINY_UNET["channel_mult"])
    assert sum(f.numel() for f in feats) / (h * w) == held_channels(widths)


@torch.no_grad()
def test_the_running_stablesr_encoder_hands_over_the_counted_features():
    # one map per level, the last level's being the middle block's (SPADE's input at that size)
    config = EncoderConfig(model_channels=32, feature_channels=64)
    encoder = TimeAwareEncoder(config).eval()
    h, w = 16, 24
    features = encoder(torch.randn(1, 4, h, w), torch.tensor([500]))
    expected = encoder_feature_channels(config.feature_channels, len(config.channel_mult))
    assert sum(f.numel() for f in features.values()) / (h * w) == expected


def test_unet_bytes_are_comfyuis_memory_required_formulas():
    # model_base.BaseModel.memory_required: efficient attention area * dtype_size * 0.01 * factor MiB, else 0.15
    assert unet_call_bytes(128 * 128, 2, 2, 0.8) == 2 * 128 * 128 * 2 * 0.01 * 0.8 * MIB
    assert unet_call_bytes(64 * 64, 4, 4, 1.0, efficient_attention=False) == 4 * 64 * 64 * 0.15 * MIB


def test_sampling_call_adds_the_held_features_in_the_compute_dtype():
    unet = unet_call_bytes(96 * 96, 2, 2, SUPIR_SDXL.factor)
    assert sampling_call_bytes(SUPIR_SDXL, 96 * 96, 2, 2) == pytest.approx(unet + 2 * 96 * 96 * 1640 * 2, rel=1e-12)


def test_vae_bytes_are_comfyuis_memory_used_formulas():
    # sd.py: encode 1767 * H * W * dtype_size (image pixels); decode 2178 * h * w * 64 * dtype_size (latent pixels)
    assert vae_encode_bytes(1024 * 1024, 2) == 1767 * 1024 * 1024 * 2
    assert vae_decode_bytes(128 * 128, 4) == 2178 * 128 * 128 * 64 * 4


def test_candidates_start_with_the_whole_image_and_step_down_to_the_smallest():
    candidates = tile_candidates(100, 300, 64)
    assert candidates[0] == 300 and candidates[-1] == 64
    assert all(a > b for a, b in zip(candidates, candidates[1:]))
    assert all(c % TILE_STEP == 0 for c in candidates[1:])
    assert tile_candidates(40, 40, 64) == [64]


def test_candidates_stop_at_the_largest_tile_and_the_whole_image_only_up_to_its_limit():
    assert tile_candidates(100, 300, 64, largest=128) == [300, 128, 120, 112, 104, 96, 88, 80, 72, 64]
    assert tile_candidates(100, 300, 64, largest=128, whole_up_to=128) == [128, 120, 112, 104, 96, 88, 80, 72, 64]
    assert tile_candidates(64, 100, 32, largest=64, whole_up_to=64)[0] == 64  # StableSR: one official tile at most
    assert tile_candidates(60, 64, 32, largest=64, whole_up_to=64)[0] == 64  # an image of one tile is sampled whole


def supir_peak(call_batch: int, dtype_bytes: int = 2):
    return lambda pixels: sampling_call_bytes(SUPIR_SDXL, pixels, call_batch, dtype_bytes)


@pytest.mark.parametrize("budget_gib", [2, 4, 8])
def test_auto_tile_is_the_largest_that_fits_the_budget(budget_gib):
    height = width = 512  # a 4096 px image's latent
    budget = budget_gib * GIB
    peak = supir_peak(2)
    choice = choose_tile(height, width, budget, peak, smallest=64)
    assert choice.fits and choice.predicted <= budget
    assert choice.predicted == pytest.approx(COMFY_MARGIN * peak(choice.tile ** 2), rel=1e-12)
    larger = choice.tile + TILE_STEP
    assert COMFY_MARGIN * peak(larger ** 2) > budget  # one step larger does not fit


def test_more_memory_never_gives_a_smaller_tile():
    choices = [choose_tile(300, 500, gib / 4 * GIB, supir_peak(2), 64) for gib in range(1, 257)]
    assert all(a.tile <= b.tile for a, b in zip(choices, choices[1:]))
    assert choices[0].tile == 64 and choices[-1].tile == 500  # from the smallest tile to the whole image


def test_a_larger_tile_is_cheaper_than_two_tiles_per_call():
    # why the choice never batches tiles: from 24 latent px on, two tiles cost more than the next size up
    peak = supir_peak(2)
    assert all(peak((t + TILE_STEP) ** 2) < 2 * peak(t ** 2) for t in range(24, 1024, TILE_STEP))


def test_a_budget_too_small_gives_the_smallest_tile_and_says_it_does_not_fit():
    choice = choose_tile(512, 512, 0.1 * GIB, supir_peak(2), smallest=64)
    assert (choice.tile, choice.fits) == (64, False)


def test_the_whole_image_is_chosen_when_it_fits():
    choice = choose_tile(80, 120, 64 * GIB, supir_peak(2), smallest=64)
    assert choice.tile == 120 and choice.predicted == pytest.approx(COMFY_MARGIN * supir_peak(2)(80 * 120))


def test_bytes_per_latent_pixel_of_both_families():
    # SD 2.x: factor 1.0 and 340 held channels; SDXL with SUPIR: factor 0.8 and 1640; per latent pixel
    # 0.02 MiB + 340 * 2 B against 0.016 MiB + 1640 * 2 B at fp16
    sd2 = sampling_call_bytes(STABLESR_SD2, 1, 1, 2)
    sdxl = sampling_call_bytes(SUPIR_SDXL, 1, 1, 2)
    assert sd2 == pytest.approx(0.02 * MIB + 340 * 2) and sdxl == pytest.approx(0.016 * MIB + 3280)
