"""fp8 against fp32 on full-size random weights (issue 22): the relative error of the forward and of a 4-step
restore when the UNet and SUPIR (or StableSR) are stored in fp8_e4m3fn instead of fp32, compute fp32 on the CPU.

Uses the ledger's files (``bench/memory_ledger.py files DIR``): the SDXL and SD 2.1 UNets stored in fp16 (as in
the released checkpoints), SUPIR converted to fp16, StableSR's fp32 file. The fp32 reference is those values in
fp32, so the figures are the cost of storing the released weights in fp8. Each storage dtype runs in a fresh
process (SDXL + SUPIR in fp32 take 15 GB); outputs pass through a temporary safetensors file.

``supir DIR``: SDXL alone and SDXL + SUPIR, one call on CFG's two halves at a 64² latent (512²), and a 4-step
restore (Quality preset, RestoreEDM, CFG 4 to 7.5) of a 64² latent. ``stablesr DIR``: SD 2.1 alone and with
StableSR, one call at a 64² latent (StableSR's encoder at timestep 500), and Turbo DDPM 4.

Errors: ``max``: max |fp8 - fp32| / max |fp32| (as tests/host/test_fp8.py); ``rms``: ||fp8 - fp32|| / ||fp32||.
Random weights (N(0, 0.02²), as the ledger writes them) are not trained ones: trained weights have wider,
heavier-tailed ranges per layer, so these figures say how the dtype path behaves at full depth, not what a real
image loses; that needs the released weights.

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/fp8_error.py supir|stablesr DIR
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_ledger import load, model_call  # noqa: E402
from stablesr import host  # noqa: E402

LATENT = 64
DTYPES = ("fp32", "fp8_e4m3fn")


def randn(*shape, seed):
    import torch
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def supir_outputs(folder: str, dtype: str) -> dict:
    import dataclasses
    import comfy.model_management as mm
    from supir_restore.supir.host.restore import restore_latent
    from supir_restore.supir.host.unet_patch import apply_supir
    from supir_restore.supir.sampling.samplers import RESTORE_PRESETS
    model, supir = load(folder, "sdxl", dtype), load(folder, "supir_fp16", dtype)
    hint = randn(1, 4, LATENT, LATENT, seed=0)
    patched = apply_supir(model, supir, hint)
    mm.load_models_gpu([patched])
    x, context, y = randn(2, 4, LATENT, LATENT, seed=1), randn(2, 77, 2048, seed=2), randn(2, 2816, seed=3)
    out = {"unet_forward": model_call(model, x, c_crossattn=context, y=y),
           "supir_forward": model_call(patched, x, c_crossattn=context, y=y)}

    def conditioning(seed):
        return [[randn(1, 77, 2048, seed=seed), {"pooled_output": randn(1, 1280, seed=seed + 1),
                                                  "width": 8 * LATENT, "height": 8 * LATENT}]]
    settings = dataclasses.replace(RESTORE_PRESETS["Quality"], steps=4)
    out["supir_restore_4_steps"] = restore_latent(patched, conditioning(4), conditioning(6), hint, 3, settings,
                                                  disable_pbar=True)
    return out


def stablesr_outputs(folder: str, dtype: str) -> dict:
    import comfy.model_management as mm
    from supir_restore.supir.host.stablesr import apply_stablesr
    from supir_restore.supir.host.stablesr_restore import restore_stablesr
    from supir_restore.supir.stablesr.sampling import STABLESR_PRESETS, TIMESTEP_KEY
    model, sr = load(folder, "sd21", dtype), load(folder, "stablesr", dtype)
    lr = randn(1, 4, LATENT, LATENT, seed=0)
    patched = apply_stablesr(model, sr, lr)
    mm.load_models_gpu([patched])
    x, context = randn(1, 4, LATENT, LATENT, seed=1), randn(1, 77, 1024, seed=2)
    conditioning = [[context, {}]]
    return {"unet_forward": model_call(model, x, c_crossattn=context),
            "stablesr_forward": model_call(patched, x, {TIMESTEP_KEY: 500}, c_crossattn=context),
            "stablesr_restore_turbo_ddpm_4": restore_stablesr(patched, conditioning, conditioning, lr, 3,
                                                              STABLESR_PRESETS["Turbo DDPM 4"], disable_pbar=True)}


def run_one(family: str, folder: str, dtype: str, out_path: str) -> None:
    host()
    import safetensors.torch
    import torch
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    outputs = (supir_outputs if family == "supir" else stablesr_outputs)(folder, dtype)
    safetensors.torch.save_file({k: v.float().contiguous() for k, v in outputs.items()}, out_path)
    print(json.dumps({"dtype": dtype, "seconds": time.perf_counter() - start}))


def errors(family: str, folder: str) -> list:
    import safetensors.torch
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for dtype in DTYPES:
            path = os.path.join(tmp, f"{dtype}.safetensors")
            subprocess.run([sys.executable, __file__, "--one", family, folder, dtype, path], check=True)
            results[dtype] = safetensors.torch.load_file(path)
    reference, fp8 = results["fp32"], results["fp8_e4m3fn"]
    rows = []
    for name, expected in reference.items():
        diff = fp8[name] - expected
        rows.append({"output": name, "max": (diff.abs().max() / expected.abs().max()).item(),
                     "rms": (diff.norm() / expected.norm()).item(), "finite": bool(fp8[name].isfinite().all()),
                     "reference_abs_max": expected.abs().max().item()})
    return rows


def main():
    if sys.argv[1] == "--one":
        run_one(*sys.argv[2:6])
    elif sys.argv[1] in ("supir", "stablesr") and len(sys.argv) == 3:
        for row in errors(sys.argv[1], sys.argv[2]):
            print(json.dumps(row), flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
