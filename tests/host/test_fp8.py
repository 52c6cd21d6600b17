"""Tier 2: fp8 end to end. SDXL stored in fp8 as ComfyUI's ``weight_dtype`` / ``--fp8_e4m3fn-unet`` store it,
with SUPIR in fp8, through a restore (and tiled); SD 2.1 and StableSR likewise. Each stays close to the same
seeded models in fp32: fp8 e4m3 keeps 3 mantissa bits, so every weight moves by up to 2^-4 of itself."""
import dataclasses

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

from stablesr_helpers import lr_latent  # noqa: E402
from supir_restore.supir.host.restore import restore_latent  # noqa: E402
from supir_restore.supir.host.stablesr import apply_stablesr, load_stablesr  # noqa: E402
from supir_restore.supir.host.stablesr_restore import restore_stablesr  # noqa: E402
from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from supir_restore.supir.sampling.samplers import RESTORE_PRESETS  # noqa: E402
from supir_restore.supir.stablesr.sampling import STABLESR_PRESETS  # noqa: E402
from tiny_models import fake_conditioning, tiny_sd21, tiny_sdxl  # noqa: E402

FP8 = torch.float8_e4m3fn
# Measured on these tiny seeded networks (AMD EPYC), as max |fp8 - fp32| / max |fp32|: SUPIR 0.043 (0.041 tiled),
# StableSR 0.108 (its UNet alone in fp8: 0.066). Kernel differences between CPUs are some 1e-6 of that, so the
# bounds are about twice the measured figures; a wrong dtype path (fp8 bytes read as values, a cast skipped) gives
# errors of order 1 or NaN, and StableSR without its SR features differs from itself by 0.45.
SUPIR_FP8_ERROR, STABLESR_FP8_ERROR = 0.1, 0.2


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def storage_dtypes(module: torch.nn.Module) -> set:
    return {p.dtype for name, p in module.named_parameters() if name.endswith("weight") and p.ndim > 1}


def supir_restore(storage, supir_dtype, supir_file, tile=None):
    model = tiny_sdxl(seed=0, storage=storage)
    supir = load_supir(supir_file, supir_dtype)
    hint = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    patched = apply_supir(model, supir, hint)
    if tile:
        patched = apply_tiled_aggregation(patched, tile, tile // 2)
    settings = dataclasses.replace(RESTORE_PRESETS["Quality"], steps=4)
    out = restore_latent(patched, fake_conditioning(seed=1), fake_conditioning(seed=2), hint, 3, settings,
                         disable_pbar=True)
    return out, model, supir


@pytest.mark.parametrize("tile", [None, 8], ids=["whole", "tiled"])
def test_sdxl_and_supir_in_fp8_restore_close_to_fp32(tiny_supir_file, tile):
    expected, _, _ = supir_restore(torch.float32, "fp32", tiny_supir_file, tile)
    out, model, supir = supir_restore(FP8, "fp8_e4m3fn", tiny_supir_file, tile)
    assert storage_dtypes(model.model.diffusion_model) == {FP8} and storage_dtypes(supir.control) == {FP8}
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < SUPIR_FP8_ERROR


def test_sd21_and_stablesr_in_fp8_restore_close_to_fp32(tiny_stablesr_file):
    lr = lr_latent(size=(16, 16))
    context = [[torch.randn(1, 5, 1024, generator=torch.Generator().manual_seed(1)), {}]]
    outputs = {}
    for storage, dtype in ((torch.float32, "fp32"), (FP8, "fp8_e4m3fn")):
        model, sr = tiny_sd21(seed=0, storage=storage), load_stablesr(tiny_stablesr_file, dtype)
        assert storage_dtypes(model.model.diffusion_model) == storage_dtypes(sr.net) == {storage}
        outputs[dtype] = restore_stablesr(apply_stablesr(model, sr, lr), context, context, lr, 3,
                                          STABLESR_PRESETS["Turbo DDPM 4"], disable_pbar=True)
    assert torch.isfinite(outputs["fp8_e4m3fn"]).all()
    assert relative_error(outputs["fp8_e4m3fn"], outputs["fp32"]) < STABLESR_FP8_ERROR
