"""Seconds and peak memory per LoRA training step on the CPU (issue 7's benchmark).

Builds an SDXL-layout UNet, SUPIR control network and VAE of a chosen width with seeded weights (no real weights
exist here), and trains a LoRA (attention targets, rank 16, batch 1, realesrgan_x4 degradation) with and without
gradient checkpointing. Each configuration runs in a fresh process. Reported: the median time of the steps after
the first, and the peak resident memory of the whole run above the resident memory with the models built (the
trainer's copies, activations, gradients, optimizer state, the per-step degradation and encodes).

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/training_step.py [--channels 32 128] [--resolution 128 256]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_memory import reset_peak, status_mb  # noqa: E402


def measure(channels: int, resolution: int, checkpointing: bool, steps: int) -> dict:
    sys.modules["supir_restore"] = types.ModuleType("supir_restore")
    sys.modules["supir_restore"].__path__ = [REPO]
    sys.path.insert(0, os.path.join(REPO, "tests", "host"))
    import host_env
    host_env.setup(os.environ["COMFYUI_PATH"])
    import torch
    from supir_restore.lora_train.dataset import Sample, build_dataset
    from supir_restore.lora_train.host.trainer import TrainSettings, train
    from supir_restore.supir.host.supir_loader import load_supir
    from tiny_models import TINY_UNET_CONFIG, supir_state_dict, tiny_clip, tiny_sdxl, tiny_vae

    config = {**TINY_UNET_CONFIG, "model_channels": channels}
    model, vae, clip = tiny_sdxl(seed=0, unet_config=config), tiny_vae(seed=3), tiny_clip(seed=2)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_training_supir_{channels}.pt")
    torch.save(supir_state_dict(vae, unet_config=config), path)
    supir = load_supir(path, "fp32")
    g = torch.Generator().manual_seed(0)
    dataset = build_dataset([Sample(torch.rand(resolution + 32, resolution + 48, 3, generator=g), "a photo", f"{i}")
                             for i in range(4)], resolution)
    marks = []

    def on_step(step, loss):
        marks.append(time.perf_counter())

    settings = TrainSettings(steps=steps, rank=16, alpha=16.0, gradient_checkpointing=checkpointing, save_every=0)
    ckpt = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_training_{os.getpid()}.safetensors")
    baseline = status_mb("VmRSS")
    reset_peak()
    train(model, supir, vae, clip, dataset, settings, ckpt, resume=False, on_step=on_step)
    os.remove(ckpt)
    peak = status_mb("VmHWM")
    seconds = statistics.median(b - a for a, b in zip(marks, marks[1:]))
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    return {"channels": channels, "unet_params_m": params / 1e6, "resolution": resolution,
            "checkpointing": checkpointing, "seconds_per_step": seconds, "peak_mb": peak - baseline}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--resolution", type=int, nargs="+", default=[128, 256],
                        help="training resolution per --channels entry")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one), steps=args.steps)))
        return
    for channels, resolution in zip(args.channels, args.resolution):
        for checkpointing in (False, True):
            spec = json.dumps({"channels": channels, "resolution": resolution, "checkpointing": checkpointing})
            out = subprocess.run([sys.executable, __file__, "--one", spec, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"UNet {r['channels']} ch ({r['unet_params_m']:.1f} M params), {r['resolution']}² crops, "
                  f"gradient checkpointing {'on ' if r['checkpointing'] else 'off'}: "
                  f"{r['seconds_per_step']:.2f} s/step, peak +{r['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
