"""Per-step cost of tiled aggregation against the cost of its tiles run alone (issue 4, benchmark a).

Builds an SDXL-layout UNet and SUPIR control network of a chosen width with seeded weights (no real weights
exist here), applies SUPIR, and times one sampling step (CFG, so cond + uncond) of:
  - the untiled model on a latent of one tile (single-tile cost),
  - the tiled model on a latent of N tiles.
overhead = tiled step time / (N x single-tile time); 1.0 means tiling costs nothing beyond its tiles.

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/tiling_overhead.py [--channels 64] [--tile 32] [--grid 3]
"""
import argparse
import os
import statistics
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.modules["supir_restore"] = types.ModuleType("supir_restore")
sys.modules["supir_restore"].__path__ = [REPO]
sys.path.insert(0, os.path.join(REPO, "tests", "host"))
import host_env  # noqa: E402

host_env.setup(os.environ["COMFYUI_PATH"])

import torch  # noqa: E402

import comfy.sample  # noqa: E402

from supir_restore.supir.loader import load_supir  # noqa: E402
from supir_restore.supir.restore import restore_edm_sampler  # noqa: E402
from supir_restore.supir.tiling import tile_grid  # noqa: E402
from supir_restore.supir.tiling_patch import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.unet_patch import apply_supir  # noqa: E402
from tiny_models import TINY_UNET_CONFIG, fake_conditioning, supir_state_dict, tiny_sdxl, tiny_vae  # noqa: E402


def step_seconds(model, hint, repeats):
    noise = torch.randn(hint.shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([7.3, 6.0])
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        comfy.sample.sample_custom(model, noise, 4.0, restore_edm_sampler(0.0), sigmas, fake_conditioning(seed=1),
                                   fake_conditioning(seed=2), torch.zeros_like(hint), disable_pbar=True, seed=0)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first run loads the models


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="UNet base channels (SDXL: 320)")
    parser.add_argument("--tile", type=int, default=32, help="tile size in latent pixels")
    parser.add_argument("--grid", type=int, default=3, help="tiles per side (stride = tile / 2)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    config = {**TINY_UNET_CONFIG, "model_channels": args.channels}
    model = tiny_sdxl(seed=0, unet_config=config)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_supir_{args.channels}.pt")
    torch.save(supir_state_dict(tiny_vae(seed=3), unet_config=config), path)
    supir = load_supir(path, "fp32")
    stride = args.tile // 2
    size = args.tile + stride * (args.grid - 1)
    tiles = len(tile_grid(size, size, args.tile, stride))
    single_hint = torch.randn(1, 4, args.tile, args.tile)
    big_hint = torch.randn(1, 4, size, size)
    single = step_seconds(apply_supir(model, supir, single_hint), single_hint, args.repeats)
    for batch in (1, tiles):
        tiled = apply_tiled_aggregation(apply_supir(model, supir, big_hint), args.tile, stride, tile_batch_size=batch)
        seconds = step_seconds(tiled, big_hint, args.repeats)
        print(f"channels {args.channels}, latent {size}x{size} ({size * 8} px), {tiles} tiles of {args.tile} "
              f"(stride {stride}), tile_batch_size {batch}: tiled step {seconds:.3f} s, single tile {single:.3f} s, "
              f"overhead {seconds / (tiles * single):.3f}")


if __name__ == "__main__":
    main()
