"""Tier 2: tiled aggregation around the SUPIR patch on ComfyUI (tiny SDXL + SUPIR)."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from supir_restore.nodes.tiling_nodes import SUPIRTiledAggregation  # noqa: E402
from supir_restore.supir.host.restore import restore_edm_sampler, supir_sigmas  # noqa: E402
from supir_restore.supir.tiling.grid import tile_grid  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import TILES_KEY  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from supir_restore.supir.sampling.prompts import supir_conditioning  # noqa: E402
from tiny_models import fake_conditioning  # noqa: E402


def latent(seed, h=24, w=40):
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))


def sample(model, hint, steps=2, seed=3, positive=None):
    noise = torch.randn(hint.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample_custom(model, noise, 4.0, restore_edm_sampler(5.0, 1.003), supir_sigmas(model, steps),
                                      positive or fake_conditioning(seed=1), fake_conditioning(seed=2),
                                      torch.zeros_like(hint), disable_pbar=True, seed=seed)


def tiled(model, tile_px, stride_px, batch=1, grid="snapped", tile_positive=None):
    return SUPIRTiledAggregation.execute(model, tile_px, stride_px, grid, batch, tile_positive).result[0]


def test_each_tile_gets_its_slice_of_the_hint(tiny_model, tiny_supir, monkeypatch):
    hint = latent(7)
    model = tiled(apply_supir(tiny_model, tiny_supir, hint), 128, 64, batch=2)
    seen = []
    trunk = tiny_supir.control.control_model
    original = trunk.forward

    def record(x, h, timesteps, context, y):
        seen.append(h.clone())
        return original(x, h, timesteps, context, y)
    monkeypatch.setattr(trunk, "forward", record)
    tiles_seen = []

    def tiles_of_call(executor, x, t, context, y, control, transformer_options, **kw):
        tiles_seen.append(transformer_options[TILES_KEY])
        return executor(x, t, context, y, control, transformer_options, **kw)
    import comfy.patcher_extension
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_tiles", tiles_of_call)
    sample(model, hint, steps=1)
    grid = tile_grid(24, 40, 16, 8)
    assert [t for _, group in tiles_seen for t in group] == grid and len(grid) == 8
    assert len(seen) == 4 and all(len(group) == 2 for _, group in tiles_seen)  # 2 tiles per call
    scaled = hint * 0.13025
    for (size, group), h in zip(tiles_seen, seen):
        assert size == (24, 40)
        expected = torch.cat([scaled.repeat(2, 1, 1, 1)[:, :, a:b, c:d] for a, b, c, d in group])
        torch.testing.assert_close(h, expected, rtol=0, atol=0)  # the same product, sliced


def test_one_tile_covering_the_latent_is_the_untiled_model(tiny_model, tiny_supir):
    hint = latent(7, 16, 16)
    patched = apply_supir(tiny_model, tiny_supir, hint)
    assert torch.equal(sample(tiled(patched, 1024, 512), hint), sample(patched, hint))


def test_tile_batching_does_not_change_the_result(tiny_model, tiny_supir):
    hint = latent(7)
    patched = apply_supir(tiny_model, tiny_supir, hint)
    one = sample(tiled(patched, 128, 64, batch=1), hint)
    four = sample(tiled(patched, 128, 64, batch=4), hint)
    assert_close_relative(four, one, 1e-4)  # batched kernels sum in another order; one step's float32 rounding
    untiled = sample(patched, hint)
    assert torch.isfinite(one).all() and relative_error(one, untiled) > 1e-3


def test_per_tile_captions(tiny_model, tiny_supir, tiny_clip):
    hint = latent(7, 16, 24)  # 2 x 1 tiles of 16x16 with stride 8 -> grid 1 row x 2 columns
    patched = apply_supir(tiny_model, tiny_supir, hint)
    positive, _ = supir_conditioning(tiny_clip, "a sky\na wall", per_line=True)
    same, _ = supir_conditioning(tiny_clip, "a sky\na sky", per_line=True)
    plain, _ = supir_conditioning(tiny_clip, "a sky")
    captions = sample(tiled(patched, 128, 64, tile_positive=positive), hint, positive=plain)
    uniform = sample(tiled(patched, 128, 64, tile_positive=same), hint, positive=plain)
    reference = sample(tiled(patched, 128, 64), hint, positive=plain)
    # a caption equal to the prompt: the same maths, with the tiles' conditioning batched differently
    assert_close_relative(uniform, reference, 1e-4)
    assert relative_error(captions, reference) > 1e-3
    with pytest.raises(ValueError, match="2 tile captions for 3 tiles"):
        sample(tiled(patched, 128, 64, tile_positive=positive), latent(7, 16, 32), positive=plain)


def test_tile_errors_name_the_pixels_the_user_typed(tiny_model):
    with pytest.raises(ValueError, match=r"tile_stride \(1024 px\) must be between 8 px and tile_size \(512 px\)"):
        tiled(tiny_model, 512, 1024)
