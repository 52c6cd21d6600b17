"""GPU memory of the shipped workflows: measured on a CUDA device beside the memory model's prediction
(``supir/tiling/memory.py``), or the prediction alone as README's table.

``--predict``: the table of predicted GPU memory for SUPIR (basic restore, x4 upscale) and StableSR x4 at
1024², 2048² and 4096² output, fp16 and fp8 weight storage, with the largest and the smallest automatic tiles. No
GPU and no model files needed.

Otherwise it runs the workflows' pipelines in-process through the pack's host functions, with the real model
files named on the command line, and prints per run ``torch.cuda.max_memory_allocated``, seconds per sampling
step (model calls only, cond and uncond and every tile included) and the prediction for this card:
- ``basic``: SUPIR restore at the output size, one tile (supir_restore_basic: LQ encode, SUPIR, Quality preset);
- ``x4``: SUPIR Upscale & Restore x4 with automatic tiles (supir_upscale_x4);
- ``stablesr``: StableSR Upscale x4 with automatic tiles and the CFW decode (stablesr_upscale_x4).
Each run starts with every model unloaded and the peak counter reset. Without CUDA it exits (code 2) before
loading anything.

Run:
    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_memory.py --predict
    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_memory.py --sdxl sd_xl_base_1.0_0.9vae.safetensors \\
        --supir SUPIR-v0Q.ckpt --stablesr stablesr_000117.ckpt --cfw vqgan_cfw_00011.ckpt \\
        [--workflows basic x4 stablesr] [--sizes 1024 2048] [--storage fp16 fp8] [--fast]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3

# Parameter counts of the official files' parts, counted on the meta device: ComfyUI's SDXL and SD 2.1 classes
# (UNet, KL VAE, text encoders) and the official configs (SUPIR_v0.yaml; StableSR's and CFW's yaml).
PARAMS = {
    "sdxl_unet": 2_567_463_684, "sdxl_clip": 818_310_146, "kl_vae": 83_653_863,
    "supir_control": 1_243_378_880, "supir_adaptors": 54_797_440, "supir_denoise_encoder": 34_163_592,
    "sd21_unet": 865_910_724, "sd2_clip": 354_032_641, "stablesr_encoder": 52_494_080, "stablesr_spade": 53_020_160,
    "cfw_fusion": 44_393_728,
}
STORAGE_BYTES = {"fp16": 2, "fp8": 1}  # UNet and SUPIR/StableSR weights; text encoders and VAE stay 16 bit
STORAGE_DTYPE = {"fp16": "fp16", "fp8": "fp8_e4m3fn"}
COMPUTE_BYTES = 2  # fp16 compute (fp8 weights are cast up layer by layer), VAE in bf16
SIZES = (1024, 2048, 4096)
WORKFLOWS = {"basic": ("sdxl", "supir"), "x4": ("sdxl", "supir"), "stablesr": ("stablesr", "cfw")}
SUPIR_PRESETS = {False: "Quality", True: "Lightning Quality"}  # --fast: 8 steps instead of 50
STABLESR_PRESETS = {False: "DDPM 200 (official)", True: "Turbo DDPM 4"}
SAMPLING_PHASE = 2  # phases(): text encoding, VAE encode, sampling, decode
CFG_BATCH = {"basic": 2, "x4": 2, "stablesr": 1}  # SUPIR's presets run cond and uncond; StableSR's DDPM cfg 1 not


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU memory of the shipped workflows: measured or predicted.")
    parser.add_argument("--predict", action="store_true", help="print the memory model's table and exit")
    parser.add_argument("--sdxl", help="SDXL checkpoint (.safetensors), for basic and x4")
    parser.add_argument("--supir", help="SUPIR file (SUPIR-v0Q.ckpt or a .safetensors conversion)")
    parser.add_argument("--stablesr", help="StableSR checkpoint (stablesr_000117.ckpt; holds SD 2.1 too)")
    parser.add_argument("--cfw", help="StableSR's CFW file (vqgan_cfw_00011.ckpt)")
    parser.add_argument("--workflows", nargs="+", choices=list(WORKFLOWS), help="default: those whose files are given")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024], help="output sides in pixels")
    parser.add_argument("--storage", nargs="+", choices=list(STORAGE_BYTES), default=["fp16"])
    parser.add_argument("--fast", action="store_true", help="Lightning Quality (8 steps) and Turbo DDPM 4 presets")
    args = parser.parse_args(argv)
    comfyui = os.environ.get("COMFYUI_PATH", "")
    if not os.path.isdir(os.path.join(comfyui, "comfy")):
        parser.error(f"COMFYUI_PATH='{comfyui}' is not a ComfyUI folder; set it to the ComfyUI you run")
    if args.predict:
        return args
    if args.workflows is None:
        args.workflows = [w for w, files in WORKFLOWS.items() if all(getattr(args, f) for f in files)]
        if not args.workflows:
            parser.error("name the model files: --sdxl and --supir (SUPIR workflows), --stablesr and --cfw (StableSR)")
    for workflow in args.workflows:
        for name in WORKFLOWS[workflow]:
            path = getattr(args, name)
            if not path:
                parser.error(f"workflow '{workflow}' needs --{name}")
            if not os.path.isfile(path):
                parser.error(f"--{name} {path}: no such file")
    for size in args.sizes:
        if size < 256 or size % 256:
            parser.error(f"--sizes {size}: use a multiple of 256 pixels (the x4 input is a multiple of 64)")
    return args


def import_pack(cpu: bool) -> None:
    """ComfyUI from COMFYUI_PATH and this pack as ``supir_restore``, as the other benches do, on the GPU unless
    ``cpu``."""
    sys.path.insert(0, os.path.abspath(os.environ["COMFYUI_PATH"]))
    if "supir_restore" not in sys.modules:
        sys.modules["supir_restore"] = types.ModuleType("supir_restore")
        sys.modules["supir_restore"].__path__ = [REPO]
    from comfy.cli_args import args
    args.cpu = cpu


def phases(workflow: str, size: int, storage: str) -> list[tuple[float, object, int]]:
    """The workflow's phases at ``size`` px output: (weight bytes on the device, activation peak as a function of
    a tile's latent pixels, the smallest automatic tile in latent pixels)."""
    from supir_restore.supir.host.auto_tiles import SAMPLING_SMALLEST, VAE_SMALLEST
    from supir_restore.supir.tiling.memory import (STABLESR_SD2, SUPIR_SDXL, sampling_call_bytes, vae_decode_bytes,
                                                   vae_encode_bytes)
    w, c, batch = STORAGE_BYTES[storage], COMPUTE_BYTES, CFG_BATCH[workflow]

    def encode(p):
        return vae_encode_bytes(64 * p, c)

    def decode(p):
        return vae_decode_bytes(p, c)

    def encode_decode(p):
        return encode(p) + decode(p)

    if workflow == "stablesr":
        return [(PARAMS["sd2_clip"] * 2, lambda p: 0.0, VAE_SMALLEST),
                (PARAMS["kl_vae"] * 2, encode, VAE_SMALLEST),
                ((PARAMS["sd21_unet"] + PARAMS["stablesr_encoder"] + PARAMS["stablesr_spade"]) * w,
                 lambda p: sampling_call_bytes(STABLESR_SD2, p, batch, c), SAMPLING_SMALLEST[STABLESR_SD2.name]),
                ((PARAMS["kl_vae"] + PARAMS["cfw_fusion"]) * 2, encode_decode, VAE_SMALLEST)]
    return [(PARAMS["sdxl_clip"] * 2, lambda p: 0.0, VAE_SMALLEST),
            (PARAMS["kl_vae"] * 2 + PARAMS["supir_denoise_encoder"] * w, encode_decode, VAE_SMALLEST),
            ((PARAMS["sdxl_unet"] + PARAMS["supir_control"] + PARAMS["supir_adaptors"]) * w,
             lambda p: sampling_call_bytes(SUPIR_SDXL, p, batch, c), SAMPLING_SMALLEST[SUPIR_SDXL.name]),
            (PARAMS["kl_vae"] * 2, decode, VAE_SMALLEST)]


def predict(workflow: str, size: int, storage: str, capacity: float | None, largest_sampling: bool = False) -> float:
    """Predicted peak bytes: each phase's tile chosen as the automatic tiles do for a device of ``capacity``
    bytes (None: ample, the largest tiles; 0: the smallest tiles); ``largest_sampling``: the sampling at the
    largest tile automatic tiles take whatever the capacity (SUPIR: the whole image; StableSR: its official
    512 px tile); ``basic`` never tiles."""
    from supir_restore.supir.host.auto_tiles import STABLESR_TILE
    from supir_restore.supir.tiling.memory import choose_tile, workflow_peak_bytes
    latent = size // 8
    largest = (STABLESR_TILE, STABLESR_TILE) if workflow == "stablesr" else (None, None)
    steps = []
    for index, (weights, peak, smallest) in enumerate(phases(workflow, size, storage)):
        sampling = index == SAMPLING_PHASE
        ample = capacity is None or workflow == "basic" or (largest_sampling and sampling)
        budget = float("inf") if ample else capacity - weights
        limits = largest if sampling else (None, None)
        steps.append((weights, choose_tile(latent, latent, budget, peak, smallest, *limits).predicted))
    return workflow_peak_bytes(steps)


def weights_bytes(workflow: str, storage: str) -> float:
    """Every weight the workflow loads, at its storage size: arithmetic, not a measurement of RAM."""
    w = STORAGE_BYTES[storage]
    if workflow == "stablesr":
        return ((PARAMS["sd21_unet"] + PARAMS["stablesr_encoder"] + PARAMS["stablesr_spade"]) * w
                + (PARAMS["sd2_clip"] + 2 * PARAMS["kl_vae"] + PARAMS["cfw_fusion"]) * 2)
    return ((PARAMS["sdxl_unet"] + PARAMS["supir_control"] + PARAMS["supir_adaptors"]
             + PARAMS["supir_denoise_encoder"]) * w + (PARAMS["sdxl_clip"] + PARAMS["kl_vae"]) * 2)


def table() -> str:
    rows = ["| workflow | output | fp16: least (smallest tiles) | fp16: largest tiles | fp8: least | "
            "fp8: largest tiles | weights at fp16 / fp8 (arithmetic) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for family, workflow in (("SUPIR", "x4"), ("StableSR x4", "stablesr")):
        for size in SIZES:
            cells = [f"{predict(workflow, size, storage, 0, largest) / GIB:.1f} GB"
                     for storage in STORAGE_BYTES for largest in (False, True)]
            weights = " / ".join(f"{weights_bytes(workflow, storage) / GIB:.1f}" for storage in STORAGE_BYTES)
            rows.append(f"| {family} | {size}² | " + " | ".join(cells) + f" | {weights} GB |")
    return "\n".join(rows)


def load(workflow: str, args, storage: str) -> dict:
    import torch
    import comfy.sd
    from supir_restore.supir.host.cfw_decode import load_cfw
    from supir_restore.supir.host.stablesr import load_stablesr
    from supir_restore.supir.host.supir_loader import load_supir
    dtype = {"fp16": torch.float16, "fp8": torch.float8_e4m3fn}[storage]
    checkpoint = args.stablesr if workflow == "stablesr" else args.sdxl
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True,
                                                             model_options={"dtype": dtype})[:3]
    parts = {"model": model, "clip": clip, "vae": vae}
    if workflow == "stablesr":
        parts.update(stablesr=load_stablesr(args.stablesr, STORAGE_DTYPE[storage]), cfw=load_cfw(args.cfw))
    else:
        parts["supir"] = load_supir(args.supir, STORAGE_DTYPE[storage])
    return parts


def timed(model, seconds: list[float]):
    """A clone of ``model`` whose model calls add their time (synchronised) to ``seconds``."""
    import torch
    timed_model = model.clone()

    def wrapper(apply_model, call):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = apply_model(call["input"], call["timestep"], **call["c"])
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        return out
    timed_model.set_model_unet_function_wrapper(wrapper)
    return timed_model


def run_one(workflow: str, size: int, parts: dict, fast: bool) -> tuple[float, float]:
    """Runs the workflow once; returns (peak allocated bytes, seconds per sampling step)."""
    import torch
    import comfy.model_management as mm
    from supir_restore.supir.host.stablesr_upscale import stablesr_upscale
    from supir_restore.supir.host.upscale import upscale_and_restore
    from supir_restore.supir.sampling.samplers import RESTORE_PRESETS
    from supir_restore.supir.stablesr.sampling import STABLESR_PRESETS as SR_PRESETS
    mm.unload_all_models()
    mm.soft_empty_cache()
    torch.cuda.reset_peak_memory_stats()
    side = size if workflow == "basic" else size // 4
    image = torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(0))
    seconds: list[float] = []
    model = timed(parts["model"], seconds)
    if workflow == "stablesr":
        preset = STABLESR_PRESETS[fast]
        stablesr_upscale(model, parts["clip"], parts["vae"], parts["stablesr"], image, 4.0, preset, 0, None, None,
                         cfw=parts["cfw"])
        steps = SR_PRESETS[preset].steps
    else:
        preset = SUPIR_PRESETS[fast]
        manual = workflow == "basic"  # one tile covering the image, whole-image VAE
        upscale_and_restore(model, parts["clip"], parts["vae"], parts["supir"], image, 1.0 if manual else 4.0,
                            preset=preset, tile_size=8192 if manual else None, tile_stride=8192 if manual else None,
                            vae_tile_size=0 if manual else None)
        steps = RESTORE_PRESETS[preset].steps
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), sum(seconds) / steps


def measure(args) -> None:
    import torch
    import comfy.model_management as mm
    capacity = torch.cuda.mem_get_info()[1]
    print(f"{torch.cuda.get_device_name()}: {capacity / GIB:.1f} GB; ComfyUI reserve "
          f"{mm.extra_reserved_memory() / GIB:.1f} GB")
    print("| workflow | storage | output | max allocated | s/step | predicted (this card) | predicted (largest tiles) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for workflow in args.workflows:
        for storage in args.storage:
            parts = load(workflow, args, storage)
            budget = capacity - mm.extra_reserved_memory()
            for size in args.sizes:
                peak, per_step = run_one(workflow, size, parts, args.fast)
                print(f"| {workflow} | {storage} | {size}² | {peak / GIB:.2f} GB | {per_step:.2f} | "
                      f"{predict(workflow, size, storage, budget) / GIB:.2f} GB | "
                      f"{predict(workflow, size, storage, None) / GIB:.2f} GB |", flush=True)
            del parts
            mm.unload_all_models()
            mm.soft_empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.predict:
        import_pack(cpu=True)
        print(table())
        return 0
    import torch
    if not torch.cuda.is_available():
        print("gpu_memory.py needs a CUDA device and torch.cuda.is_available() is False here; "
              "nothing was loaded (--predict prints the model's table without a GPU)", file=sys.stderr)
        return 2
    import_pack(cpu=False)
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
