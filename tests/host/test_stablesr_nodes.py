"""Tier 2: the StableSR nodes in-process (tiny SD 2.1, CLIP and VAE): StableSR Upscale's sizes and its equality
with the separate nodes, the loader's file lists and errors, the presets and the literal prompts."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import folder_paths  # noqa: E402

from helpers import assert_close_relative, relative_error  # noqa: E402
from host_helpers import run_node, smooth_photo  # noqa: E402
from stablesr_helpers import stablesr_file  # noqa: E402
from supir_restore.nodes.folders import register_model_folder  # noqa: E402
from supir_restore.nodes.stablesr_nodes import (ApplyStableSR, StableSRConditioning, StableSRLoader,  # noqa: E402
                                                StableSRRestore, StableSRUpscale, stablesr_file_names)
from supir_restore.supir.host.stablesr_restore import escape_prompt  # noqa: E402
from supir_restore.supir.stablesr.checkpoint import StableSRCheckpointError  # noqa: E402
from tiny_models import tiny_sd21, tiny_sd21_clip, tiny_vae  # noqa: E402

TURBO = "Turbo DDPM 4"


@pytest.fixture(scope="module")
def sd21():
    return tiny_sd21(seed=0), tiny_sd21_clip(seed=2), tiny_vae(seed=3)


def test_upscale_gives_the_exact_size_and_equals_the_separate_nodes(sd21, stablesr):
    model, clip, vae = sd21
    image = smooth_photo(24, 40, seed=1)
    out, lr = run_node(StableSRUpscale, model=model, clip=clip, vae=vae, stablesr=stablesr, image=image, scale=2.0,
                       preset=TURBO, seed=3, tile_size=64, tile_stride=32, colour_fix="none",
                       resize_method="bicubic").result
    assert out.shape == (1, 48, 80, 3) and lr.shape == (1, 64, 128, 3)  # short side raised to one 64 px tile
    assert torch.isfinite(out).all()

    lr_latent = {"samples": vae.encode(lr)}  # the same pipeline, node by node (one 64 px tile across: 2 tiles)
    from supir_restore.nodes.tiling_nodes import SUPIRTiledAggregation
    patched = run_node(ApplyStableSR, model=model, stablesr=stablesr, lr_latent=lr_latent).result[0]
    tiled = run_node(SUPIRTiledAggregation, model=patched, tile_size=64, tile_stride=32, grid="snapped",
                     tile_batch_size=1).result[0]
    positive, negative = run_node(StableSRConditioning, clip=clip, positive="",
                                  negative="3d, cartoon, anime, sketches, (worst quality:2), (low quality:2)",
                                  literal=True).result
    latent = run_node(StableSRRestore, model=tiled, positive=positive, negative=negative, lr_latent=lr_latent,
                      seed=3, preset=TURBO, sampler="ddim", steps=9, start="noise", cfg=5.0, eta=0.5).result[0]
    decoded = torch.nn.functional.interpolate(vae.decode(latent["samples"]).movedim(-1, 1), size=(48, 80),
                                              mode="bicubic", antialias=True).movedim(1, -1).clamp(0, 1)
    # the preset, not the Custom values, was used; the one-node pipeline encodes and resizes in its own order
    assert_close_relative(out, decoded, 2e-3)


@pytest.mark.parametrize("method", ["mkl", "wavelet_adaptive"])
def test_upscale_takes_the_added_colour_fixes(sd21, stablesr, method):
    model, clip, vae = sd21
    image = smooth_photo(24, 40, seed=1)
    runs = {fix: run_node(StableSRUpscale, model=model, clip=clip, vae=vae, stablesr=stablesr, image=image,
                          scale=2.0, preset=TURBO, seed=3, tile_size=64, tile_stride=32, colour_fix=fix,
                          resize_method="bicubic").result[0] for fix in (method, "none")}
    assert runs[method].shape == (1, 48, 80, 3) and torch.isfinite(runs[method]).all()
    # the tiny random models drift far from the input's colours; the fix pulls the mean colour back
    target = image.mean((1, 2))
    assert (runs[method].mean((1, 2)) - target).abs().max() < (runs["none"].mean((1, 2)) - target).abs().max()


def test_prompts_are_passed_literally_unless_asked(sd21):
    clip = sd21[1]
    assert escape_prompt("(worst quality:2)") == "\\(worst quality:2\\)"
    literal, weighted = (run_node(StableSRConditioning, clip=clip, positive="", negative="(worst quality:2)",
                                  literal=flag).result[1] for flag in (True, False))
    words = clip.encode_from_tokens_scheduled(clip.tokenize("worst quality"))  # the words, weight 1
    assert relative_error(literal[0][0], weighted[0][0]) > 1e-3
    assert relative_error(literal[0][0], words[0][0]) > 1e-3  # the parentheses and ':2' are text


def test_loader_lists_stablesr_files_and_loads_from_checkpoints(comfy_dirs, monkeypatch):
    register_model_folder()
    checkpoints = comfy_dirs / "models" / "checkpoints"
    checkpoints.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints",
                        ([str(checkpoints)], folder_paths.supported_pt_extensions))
    stablesr_file(checkpoints / "stablesr_000117.ckpt")
    torch.save({"state_dict": {}}, checkpoints / "v2-1_512-ema-pruned.ckpt")
    assert (comfy_dirs / "models" / "stablesr").is_dir()
    assert stablesr_file_names() == ["stablesr_000117.ckpt"]
    sr = run_node(StableSRLoader, stablesr_name="stablesr_000117.ckpt", weight_dtype="fp32").result[0]
    assert len(sr.net.spade.paths) == 22


def test_loader_names_a_supir_file(comfy_dirs, tiny_supir_file):
    register_model_folder()
    target = comfy_dirs / "models" / "stablesr" / "SUPIR-v0Q.ckpt"
    target.symlink_to(tiny_supir_file)
    with pytest.raises(StableSRCheckpointError, match="SUPIR-v0Q.ckpt: this is a SUPIR file, not StableSR"):
        run_node(StableSRLoader, stablesr_name="SUPIR-v0Q.ckpt", weight_dtype="auto")
