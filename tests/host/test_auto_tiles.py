"""Tier 2: automatic tiles on ComfyUI: the memory model's constants against ComfyUI's own estimates, and the tiles
chosen under a mocked free memory (comfy.model_management.get_free_memory) are the predicted ones."""
import logging

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.model_management as mm  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.supported_models  # noqa: E402

from supir_restore.nodes.supir_nodes import SUPIRLQEncode  # noqa: E402
from supir_restore.nodes.tiling_nodes import SUPIRTiledAggregation  # noqa: E402
from supir_restore.nodes.upscale_nodes import SUPIRUpscaleRestore  # noqa: E402
from supir_restore.supir.host.auto_tiles import VAE_SMALLEST, efficient_attention  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import TILES_KEY  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from supir_restore.supir.tiling.grid import tile_grid  # noqa: E402
from supir_restore.supir.tiling.memory import (COMFY_MARGIN, SD2_FACTOR, SDXL_FACTOR, SUPIR_SDXL, TILE_STEP,  # noqa: E402
                                               sampling_call_bytes, unet_call_bytes, vae_decode_bytes,
                                               vae_encode_bytes)
from test_tiling_host import latent, sample  # noqa: E402


def test_the_constants_are_comfyuis(tiny_model, tiny_vae):
    assert comfy.supported_models.SDXL.memory_usage_factor == SDXL_FACTOR
    assert comfy.supported_models.SD20.memory_usage_factor == SD2_FACTOR
    base = tiny_model.model
    size = mm.dtype_size(base.manual_cast_dtype or base.get_dtype())
    for shape in ([2, 4, 64, 96], [6, 4, 40, 24]):
        expected = unet_call_bytes(shape[2] * shape[3], shape[0], size, base.memory_usage_factor,
                                   efficient_attention())
        assert base.memory_required(shape) == pytest.approx(expected, rel=1e-12)
    if not mm.is_amd():  # ComfyUI multiplies the KL VAE's estimates by 2.73 on AMD
        vae_size = mm.dtype_size(tiny_vae.vae_dtype)
        assert tiny_vae.memory_used_decode((1, 4, 32, 48), tiny_vae.vae_dtype) == vae_decode_bytes(32 * 48, vae_size)
        assert tiny_vae.memory_used_encode((1, 3, 256, 384), tiny_vae.vae_dtype) == vae_encode_bytes(256 * 384,
                                                                                                     vae_size)


def mock_free_memory(monkeypatch, budget: float) -> None:
    """Free memory such that ``budget`` bytes remain after ComfyUI's reserve. ComfyUI's sub-quadratic attention asks
    with ``torch_free_too`` to size its query chunks, which changes its speed, not its result: it gets the real
    figures, so that the tiny models do not crawl through thousands of chunks."""
    free, real = budget + mm.extra_reserved_memory(), mm.get_free_memory
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False:
                        real(dev, True) if torch_free_too else free)


def sampled_tiles(model, hint):
    """One sampling step of ``model``: the (tiles per call, chunks per call, tile grid) its calls used."""
    calls = []

    def record(executor, x, t, context, y, control, transformer_options, **kw):
        calls.append((transformer_options[TILES_KEY][1], len(transformer_options["cond_or_uncond"])))
        return executor(x, t, context, y, control, transformer_options, **kw)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_tiles", record)
    sample(model, hint, steps=1)
    return calls


@pytest.mark.parametrize("target", [64, 80, 104])
def test_auto_aggregation_picks_the_tile_predicted_to_fit(tiny_model, tiny_supir, monkeypatch, caplog, target):
    # A 72x136 latent (576x1088 px); the free memory is set so that a target x target tile (at most 72 rows) fits
    # one chunk at a time with ComfyUI's 1.5 margin and the next tile size up does not.
    h, w = 72, 136
    per_call = sampling_call_bytes(SUPIR_SDXL, min(target, h) * target, 1, 4, efficient_attention())
    larger = sampling_call_bytes(SUPIR_SDXL, min(target + TILE_STEP, h) * (target + TILE_STEP), 1, 4,
                                 efficient_attention())
    budget = COMFY_MARGIN * (per_call + larger) / 2
    mock_free_memory(monkeypatch, budget)
    hint = latent(7, h, w)
    model = SUPIRTiledAggregation.execute(apply_supir(tiny_model, tiny_supir, hint), 1024, 512, "snapped", 1, None,
                                          "official", "auto").result[0]
    with caplog.at_level(logging.INFO):
        calls = sampled_tiles(model, hint)
    assert {chunks for _, chunks in calls} == {1}  # cond and uncond apart: ComfyUI saw the same small memory
    assert [t for group, _ in calls for t in group] == tile_grid(h, w, target, target // 2) * 2
    assert all(len(group) == 1 for group, _ in calls)  # one tile per call
    assert f"{8 * target} px tiles" in caplog.text and "SUPIR on SDXL sampling" in caplog.text


def test_auto_sampling_tiles_stop_at_supirs_official_tile(tiny_model, tiny_supir, monkeypatch, caplog):
    # A 64x144 latent (512x1152 px): memory for every tile but the whole image gives SUPIR_v0_tiled's 1024 px tile
    # (128 latent px), not the 1088 px one the memory would allow; memory for the whole image gives the whole image.
    h, w = 64, 144
    per_call = [sampling_call_bytes(SUPIR_SDXL, h * side, 1, 4, efficient_attention()) for side in (136, w)]
    hint = latent(7, h, w)
    for budget, expected in ((COMFY_MARGIN * sum(per_call) / 2, tile_grid(h, w, 128, 64)), (1e15, None)):
        mock_free_memory(monkeypatch, budget)
        model = SUPIRTiledAggregation.execute(apply_supir(tiny_model, tiny_supir, hint), 1024, 512, "snapped", 1,
                                              None, "official", "auto").result[0]
        calls = []

        def record(executor, x, t, context, y, control, transformer_options, **kw):
            calls.append(transformer_options.get(TILES_KEY, (None, None))[1])  # no tiles: the whole latent
            return executor(x, t, context, y, control, transformer_options, **kw)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_tiles", record)
        sample(model, hint, steps=1)
        if expected is None:
            assert calls and set(calls) == {None}
        else:
            assert {t for group in calls for t in group} == set(expected)


@torch.inference_mode()  # as ComfyUI runs nodes; its tiled VAE needs it
def test_auto_lq_encode_is_the_whole_image_when_it_fits_and_the_predicted_tile_when_not(tiny_supir, tiny_vae,
                                                                                     monkeypatch):
    image = torch.rand(1, 512, 768, 3, generator=torch.Generator().manual_seed(0))
    size = mm.dtype_size(tiny_vae.vae_dtype)

    def peak(tile):  # encode and decode of one tile x tile latent (the image is 64x96 latent pixels)
        area = min(tile, 64) * min(tile, 96)
        return COMFY_MARGIN * (vae_encode_bytes(64 * area, size) + vae_decode_bytes(area, size))
    mock_free_memory(monkeypatch, peak(96) * 1.01)
    whole = SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 0, "comfy", "auto").result
    manual_whole = SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 0, "comfy").result
    assert torch.equal(whole[0]["samples"], manual_whole[0]["samples"]) and torch.equal(whole[1], manual_whole[1])
    target = 40
    assert target >= VAE_SMALLEST
    mock_free_memory(monkeypatch, (peak(target) + peak(target + TILE_STEP)) / 2)
    auto = SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 0, "comfy", "auto").result
    manual = SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 8 * target, "comfy").result
    assert torch.equal(auto[0]["samples"], manual[0]["samples"]) and torch.equal(auto[1], manual[1])
    assert not torch.equal(auto[0]["samples"], whole[0]["samples"])  # it did tile


def test_auto_upscale_with_ample_memory_is_the_whole_image_run(tiny_model, tiny_clip, tiny_vae, tiny_supir,
                                                               monkeypatch, caplog):
    mock_free_memory(monkeypatch, 64 * 1024 ** 3)
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(2))
    args = (tiny_model, tiny_clip, tiny_vae, tiny_supir, image, 2.0, "a photo", "Lightning Quality", 0, 0.9)
    with caplog.at_level(logging.INFO):
        auto = SUPIRUpscaleRestore.execute(*args, 256, 128, "wavelet", "64", "bicubic", 256, "auto").result
    manual = SUPIRUpscaleRestore.execute(*args, 8192, 4096, "wavelet", "64", "bicubic", 0).result
    assert torch.equal(auto[0], manual[0]) and torch.equal(auto[1], manual[1])
    lines = [r.getMessage() for r in caplog.records if "auto tiles" in r.getMessage()]
    assert len(lines) == 3 and all("the whole" in line for line in lines)  # LQ VAE, sampling, decode


def test_tiles_input_is_optional_and_named_in_errors(tiny_model):
    for node in (SUPIRTiledAggregation, SUPIRLQEncode, SUPIRUpscaleRestore):
        tiles = [i for i in node.define_schema().inputs if i.id == "tiles"]
        assert len(tiles) == 1 and tiles[0].optional
    with pytest.raises(ValueError, match="tiles 'big' is not one of auto, manual"):
        SUPIRTiledAggregation.execute(tiny_model, 1024, 512, "snapped", 1, None, "official", "big")


def test_auto_cfw_decode_tiles_as_predicted(tiny_vae, tmp_path, monkeypatch, caplog):
    from stablesr_helpers import cfw_state_dict
    from supir_restore.nodes.cfw_nodes import StableSRCFWDecode
    from supir_restore.supir.host.cfw_decode import load_cfw
    path = tmp_path / "vqgan_cfw_tiny.ckpt"
    torch.save({"state_dict": cfw_state_dict(tiny_vae)}, path)
    cfw = load_cfw(str(path))
    h, w = 40, 56
    samples = {"samples": torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(0))}
    lr = torch.rand(1, 8 * h, 8 * w, 3, generator=torch.Generator().manual_seed(1))
    size = mm.dtype_size(tiny_vae.vae_dtype)

    def peak(tile):  # the CFW decode of a tile encodes its LR crop and decodes it
        area = min(tile, h) * min(tile, w)
        return COMFY_MARGIN * (vae_encode_bytes(64 * area, size) + vae_decode_bytes(area, size))
    target = 32
    mock_free_memory(monkeypatch, (peak(target) + peak(target + TILE_STEP)) / 2)
    with caplog.at_level(logging.INFO):
        auto = StableSRCFWDecode.execute(samples, tiny_vae, cfw, lr, 0.5, "cfw_file", 0, tiles="auto").result[0]
    manual = StableSRCFWDecode.execute(samples, tiny_vae, cfw, lr, 0.5, "cfw_file", 8 * target).result[0]
    assert torch.equal(auto, manual) and f"{8 * target} px tiles" in caplog.text
    mock_free_memory(monkeypatch, peak(w) * 1.01)
    whole = StableSRCFWDecode.execute(samples, tiny_vae, cfw, lr, 0.5, "cfw_file", 0, tiles="auto").result[0]
    assert torch.equal(whole, StableSRCFWDecode.execute(samples, tiny_vae, cfw, lr, 0.5, "cfw_file", 0).result[0])


def test_auto_stablesr_upscale_samples_with_the_predicted_tile(stablesr, monkeypatch, caplog):
    from host_helpers import run_node, smooth_photo
    from supir_restore.nodes.stablesr_nodes import StableSRUpscale
    from supir_restore.supir.tiling.memory import STABLESR_SD2
    from tiny_models import tiny_sd21, tiny_sd21_clip, tiny_vae
    model, clip, vae = tiny_sd21(seed=0), tiny_sd21_clip(seed=2), tiny_vae(seed=3)
    image = smooth_photo(24, 40, seed=1)  # raised to a 512 px short side: a 64x104 latent

    def peak(tile):  # one chunk per call: the small free memory keeps ComfyUI from batching cond and uncond
        return COMFY_MARGIN * sampling_call_bytes(STABLESR_SD2, min(tile, 64) * tile, 1, 4, efficient_attention())
    mock_free_memory(monkeypatch, (peak(64) + peak(72)) / 2)  # 64 fits, 72 (64 rows x 72) does not
    inputs = dict(model=model, clip=clip, vae=vae, stablesr=stablesr, image=image, scale=2.0, preset="Turbo DDPM 4",
                  seed=3, tile_stride=256, colour_fix="none", resize_method="bicubic")
    with caplog.at_level(logging.INFO):  # tile_size 1024 is unused: it would raise the short side to 1024 px
        out, lr = run_node(StableSRUpscale, tile_size=1024, tiles="auto", **inputs).result
    # StableSR's 512 px tile sizes the upscale; the sampling tile is the predicted one (the aggregation tests check
    # that the logged tile is the one sampled); one run only: the tiny SD 2.1 attends at every level, slow on a CPU
    assert lr.shape == (1, 512, 832, 3) and out.shape == (1, 48, 80, 3)
    assert "StableSR on SD 2.x sampling): 512 px tiles" in caplog.text
