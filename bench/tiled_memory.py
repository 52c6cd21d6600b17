"""Peak resident memory of a tiled restore (LQ encode + 2 sampling steps + decode) at 1024², 2048² and 4096²
(issue 4, benchmark b). Each size runs in a fresh process; the figure reported is the peak RSS minus the RSS
after the models are built, minus the image buffers themselves (input, stage-1 and output IMAGE tensors and
the latents), so what remains is what tiling is meant to bound.

Models: the tiny SDXL-layout UNet + SUPIR of the tests and a VAE with SDXL's layout at 32 base channels (no real
weights exist here); tiles of 1024 px (128 latent) with stride 512 for sampling and 512 px for the VAE.

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/tiled_memory.py
"""
import json
import os
import subprocess
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_memory import reset_peak, status_mb  # noqa: E402


def measure(size: int) -> dict:
    sys.modules["supir_restore"] = types.ModuleType("supir_restore")
    sys.modules["supir_restore"].__path__ = [REPO]
    sys.path.insert(0, os.path.join(REPO, "tests", "host"))
    import host_env
    host_env.setup(os.environ["COMFYUI_PATH"])
    import torch
    from supir_restore.supir.host.supir_loader import load_supir
    from supir_restore.supir.host.lq_encode import encode_lq
    from supir_restore.supir.host.restore import restore_latent
    from supir_restore.supir.sampling.samplers import RestoreSettings, StartMode
    from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation
    from supir_restore.supir.host.unet_patch import apply_supir
    from tiny_models import fake_conditioning, supir_state_dict, tiny_sdxl, tiny_vae

    model, vae = tiny_sdxl(seed=0), tiny_vae(seed=3)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_tiled_memory_supir.pt")
    torch.save(supir_state_dict(vae), path)
    supir = load_supir(path, "fp32")
    with torch.inference_mode():
        image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
        baseline = status_mb("VmRSS")
        reset_peak()
        hint, stage1 = encode_lq(supir, vae, image, tile_size=512)
        patched = apply_tiled_aggregation(apply_supir(model, supir, hint), 128, 64, tile_batch_size=1)
        latent = restore_latent(patched, fake_conditioning(seed=1), fake_conditioning(seed=2), hint, 0,
                                RestoreSettings(steps=2), StartMode(), disable_pbar=True)
        restored = vae.decode_tiled(latent, tile_x=64, tile_y=64, overlap=8)
    peak = status_mb("VmHWM")
    buffers = sum(t.numel() * t.element_size() for t in (image, stage1, restored, hint, latent)) / 2 ** 20
    return {"size": size, "peak_mb": peak, "baseline_mb": baseline, "buffers_mb": buffers,
            "working_mb": peak - baseline - buffers}


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    rows = []
    for size in (1024, 2048, 4096):
        out = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{size}²: peak RSS {r['peak_mb']:.0f} MB, after model load {r['baseline_mb']:.0f} MB, "
              f"image buffers {r['buffers_mb']:.0f} MB, working memory {r['working_mb']:.0f} MB", flush=True)
    print(f"growth of working memory 1024² -> 4096²: {rows[-1]['working_mb'] / rows[0]['working_mb']:.2f}x")


if __name__ == "__main__":
    main()
