"""Tier 2: the one-node upscale and restore on tiny models."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from helpers import assert_close_relative  # noqa: E402

from supir_restore.nodes.upscale_nodes import SUPIRUpscaleRestore  # noqa: E402
from supir_restore.supir.image.colour import colour_fix  # noqa: E402


def run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, scale, seed=0, tile=1024, colour="wavelet"):
    return SUPIRUpscaleRestore.execute(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, scale, "a photo",
                                       "Lightning Quality", seed, 0.9, tile, tile // 2, colour, "64", "bicubic",
                                       0).result


def test_exact_output_size_tiles_and_determinism(tiny_model, tiny_clip, tiny_vae, tiny_supir):
    image = torch.rand(1, 54, 37, 3, generator=torch.Generator().manual_seed(0))
    restored, stage1 = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, tile=256)
    assert restored.shape == (1, 108, 74, 3) and stage1.shape == (1, 128, 64, 3)  # 108x74 sampled at 128x64
    assert 0 <= float(restored.min()) and float(restored.max()) <= 1 and restored.std() > 0
    again, _ = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, tile=256)
    other, _ = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, seed=1, tile=256)
    assert torch.equal(restored, again) and not torch.equal(restored, other)


def test_colour_fix_pulls_toward_the_stage1_colours(tiny_model, tiny_clip, tiny_vae, tiny_supir):
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    fixed, stage1 = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, colour="adain")
    raw, _ = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, colour="none")
    target = stage1.mean(dim=(1, 2))
    assert (fixed.mean(dim=(1, 2)) - target).abs().max() < (raw.mean(dim=(1, 2)) - target).abs().max()


@pytest.mark.parametrize("method", ["lab", "mkl", "histogram", "wavelet_adaptive"])
def test_every_colour_fix_is_the_fix_of_the_uncorrected_result(tiny_model, tiny_clip, tiny_vae, tiny_supir, method):
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    fixed, stage1 = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, colour=method)
    raw, _ = run(tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, colour="none")
    # 32 px x2 samples at exactly 64 px: the final resize keeps the size, so the fix is all that differs
    assert_close_relative(fixed, colour_fix(raw, stage1, method), 1e-5)  # the same float32 maths, reordered
    assert (fixed - raw).abs().max() > 1e-2


@pytest.mark.parametrize("tile, stride, vae_tile, problem", [
    (512, 1024, 0, r"tile_stride \(1024 px\) must be between 8 px and tile_size \(512 px\).*e.g. tile_stride 256 px"),
    (512, 0, 0, r"tile_stride \(0 px\)"),
    (0, 0, 0, r"tile_size \(0 px\) must be at least 64 px"),
    (32, 16, 0, r"tile_size \(32 px\) must be at least 64 px"),
    (512, 256, 8, r"vae_tile_size \(8 px\) must be 0 \(the whole image at once\) or at least 64 px")])
def test_tile_errors_speak_in_pixels_before_any_encoding(tiny_model, tiny_clip, tile, stride, vae_tile, problem):
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match=problem):  # no VAE and no SUPIR: they must not be reached
        SUPIRUpscaleRestore.execute(tiny_model, tiny_clip, None, None, image, 2.0, "", "Quality", 0, 1.0, tile,
                                    stride, "wavelet", "64", "bicubic", vae_tile)
