"""Per-step cost of tiled aggregation against the cost of its tiles run alone (issue 4, benchmark a).

Builds an SDXL-layout UNet and SUPIR control network of a chosen width with seeded weights (no real weights
exist here), applies SUPIR, and times one sampling step (CFG, so cond + uncond) of:
  - the untiled model on a latent of one tile (single-tile cost),
  - the tiled model on a latent of N tiles, one tile per model call and all N tiles in one call.
overhead = tiled step time / (N x single-tile time); 1.0 means tiling costs nothing beyond its tiles.

The runs are interleaved (single, tiled, batched, single, ...) so that load changes on a shared machine hit all
of them alike; medians are reported. An outermost DIFFUSION_MODEL wrapper times the model calls (SUPIR trunk +
UNet), which splits each step into time in the model and time outside it (sampler, ComfyUI's per-call work,
the tiling wrapper: slicing, hint slices, blending). "outside/tile" is the tiled step's outside time minus the
single step's, per tile: the fixed cost a tile adds beyond its model call.

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

import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402

from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from supir_restore.supir.host.restore import restore_edm_sampler  # noqa: E402
from supir_restore.supir.tiling.grid import tile_grid  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from tiny_models import TINY_UNET_CONFIG, fake_conditioning, supir_state_dict, tiny_sdxl, tiny_vae  # noqa: E402


class ModelTimer:
    """A DIFFUSION_MODEL wrapper summing the wall time of the calls it wraps."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self, executor, *args, **kwargs):
        start = time.perf_counter()
        try:
            return executor(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def timed_model(model):
    """A clone of ``model`` whose model calls (everything added later, e.g. SUPIR's trunk, included) are timed."""
    timer = ModelTimer()
    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "bench_model_timer", timer)
    return m, timer


def step(model, timer, hint) -> tuple[float, float, float]:
    """One CFG sampling step: (wall seconds, CPU seconds of this process, wall seconds inside model calls)."""
    noise = torch.randn(hint.shape, generator=torch.Generator().manual_seed(0))
    timer.seconds = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    comfy.sample.sample_custom(model, noise, 4.0, restore_edm_sampler(0.0), torch.tensor([7.3, 6.0]),
                               fake_conditioning(seed=1), fake_conditioning(seed=2), torch.zeros_like(hint),
                               disable_pbar=True, seed=0)
    return time.perf_counter() - wall, time.process_time() - cpu, timer.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="UNet base channels (SDXL: 320)")
    parser.add_argument("--tile", type=int, default=32, help="tile size in latent pixels")
    parser.add_argument("--grid", type=int, default=3, help="tiles per side (stride = tile / 2)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    config = {**TINY_UNET_CONFIG, "model_channels": args.channels}
    model, timer = timed_model(tiny_sdxl(seed=0, unet_config=config))
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_supir_{args.channels}.pt")
    torch.save(supir_state_dict(tiny_vae(seed=3), unet_config=config), path)
    supir = load_supir(path, "fp32")
    stride = args.tile // 2
    size = args.tile + stride * (args.grid - 1)
    tiles = len(tile_grid(size, size, args.tile, stride))
    single_hint = torch.randn(1, 4, args.tile, args.tile)
    big_hint = torch.randn(1, 4, size, size)
    runs = {"single": (apply_supir(model, supir, single_hint), single_hint)}
    for batch in (1, tiles):
        runs[batch] = (apply_tiled_aggregation(apply_supir(model, supir, big_hint), args.tile, stride,
                                               tile_batch_size=batch), big_hint)
    times = {name: [] for name in runs}
    for repeat in range(args.repeats + 1):  # the first round loads the models and is not counted
        for name, (m, hint) in runs.items():
            result = step(m, timer, hint)
            if repeat:
                times[name].append(result)
    median = {name: [statistics.median(column) for column in zip(*rows)] for name, rows in times.items()}
    wall, cpu, inside = median["single"]
    print(f"channels {args.channels}, latent {size}x{size} ({size * 8} px), {tiles} tiles of {args.tile} "
          f"(stride {stride}), {args.repeats} interleaved repeats, {torch.get_num_threads()} threads; "
          f"single tile: step {wall:.3f} s (CPU {cpu:.3f} s), in the model {inside:.3f} s")
    for batch in (1, tiles):
        t_wall, t_cpu, t_inside = median[batch]
        outside_per_tile = ((t_wall - t_inside) - (wall - inside)) / tiles
        print(f"tile_batch_size {batch}: tiled step {t_wall:.3f} s, overhead {t_wall / (tiles * wall):.3f} "
              f"(CPU time {t_cpu / (tiles * cpu):.3f}); in the model {t_inside:.3f} s "
              f"({t_inside / (tiles * inside):.3f} x {tiles} single-tile calls), "
              f"outside/tile {1000 * outside_per_tile:+.1f} ms")


if __name__ == "__main__":
    main()
