"""Peak resident memory of StableSR's CFW decode, whole-image and tiled (512 px tiles), at 512², 1024² and 2048².
Each run is a fresh process; the figure reported is the peak RSS minus the RSS after the models are built, minus
the image buffers themselves (LR image, latent, output IMAGE), so what remains is what tiling is meant to bound.

Models: a VAE with the SD 2.1 VAE's layout (four levels, channel multipliers 1/2/4/4, two ResBlocks per level) at
32 base channels, and CFW fusion layers at its levels 1 and 2 (64 and 128 channels, two RRDBs of growth 32), with
seeded weights (no real weights exist here).

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/cfw_decode_memory.py
"""
import json
import os
import subprocess
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_memory import reset_peak, status_mb  # noqa: E402

SIZES = (512, 1024, 2048)
TILE = 512


def measure(size: int, tile: int) -> dict:
    sys.modules["supir_restore"] = types.ModuleType("supir_restore")
    sys.modules["supir_restore"].__path__ = [REPO]
    sys.path.insert(0, os.path.join(REPO, "tests", "host"))
    import host_env
    host_env.setup(os.environ["COMFYUI_PATH"])
    import time
    import torch
    from supir_restore.supir.host.cfw_decode import cfw_decode, load_cfw
    from supir_restore.supir.stablesr.cfw import CFWLayers
    from tiny_models import TINY_VAE_CONFIG, seeded_init_, tiny_vae

    ddconfig = {**TINY_VAE_CONFIG["params"]["ddconfig"], "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2}
    vae = tiny_vae(seed=3, config={"params": {**TINY_VAE_CONFIG["params"], "ddconfig": ddconfig}})
    sd = {f"decoder.{k}": v for k, v in seeded_init_(CFWLayers({1: 64, 2: 128}), 7).state_dict().items()}
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_cfw_decode_memory.pt")
    torch.save(sd, path)
    cfw = load_cfw(path)
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=g)
    lr = torch.rand(1, size, size, 3, generator=g)
    baseline = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    image = cfw_decode(cfw, vae, latent, lr, 0.5, "vae", tile)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    buffers = sum(t.numel() * t.element_size() for t in (latent, lr, image)) / 2 ** 20
    return {"size": size, "tile": tile, "peak_mb": peak, "baseline_mb": baseline, "buffers_mb": buffers,
            "working_mb": peak - baseline - buffers, "seconds": seconds}


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))
        return
    for tile in (0, TILE):
        for size in SIZES:
            out = subprocess.run([sys.executable, __file__, "--one", str(size), str(tile)], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{'whole image' if tile == 0 else f'{tile} px tiles'}, {size}²: working memory "
                  f"{r['working_mb']:.0f} MB (peak RSS {r['peak_mb']:.0f} MB, after model load "
                  f"{r['baseline_mb']:.0f} MB, image buffers {r['buffers_mb']:.0f} MB), {r['seconds']:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
