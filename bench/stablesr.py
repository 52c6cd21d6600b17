"""StableSR's cost on ComfyUI's SD 2.x UNet (issue 16's benchmark).

``step``: time and peak resident memory of one sampling step (one model call, DDPM) of the full-size SD 2.1 UNet
alone and with StableSR applied (full-size time-aware encoder + 22 SPADE layers), at 512² (64² latent; more sizes
in pixels after ``step``), fp32 on the CPU, random weights in the real shapes (speed and memory do not depend on the values).
Each configuration runs in a fresh process: 1 warm-up step, then the median of 3 timed steps.

``tiled``: peak resident memory of a tiled StableSR restore (VAE encode, 2 DDPM steps with 512 px tiles, stride
256, VAE decode in 512 px tiles) at 1024², 2048² and 4096², with the tiny models of the tests; reported as working
memory (peak RSS minus the RSS after the models are built, minus the image and latent buffers).

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/stablesr.py step [512 768 ...] | tiled
"""
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

SD21_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
             "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
             "use_temporal_attention": False, "use_temporal_resblock": False}


def host():
    sys.modules["supir_restore"] = types.ModuleType("supir_restore")
    sys.modules["supir_restore"].__path__ = [REPO]
    sys.path.insert(0, os.path.join(REPO, "tests", "host"))
    import host_env
    host_env.setup(os.environ["COMFYUI_PATH"])


def random_(module, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


def full_stablesr_file(path: str) -> str:
    """The SR parts of a StableSR file in the official full-size shapes, random values."""
    import safetensors.torch
    from supir_restore.supir.stablesr.checkpoint import SPADELayers, sd_resblock_widths
    from supir_restore.supir.stablesr.encoder import EncoderConfig, TimeAwareEncoder
    encoder = random_(TimeAwareEncoder(EncoderConfig()), 1)
    spade = random_(SPADELayers(sd_resblock_widths(320, (1, 2, 4, 4), 2), 256, hidden=128), 2)
    tensors = {f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()}
    tensors.update({f"model.diffusion_model.{k}": v for k, v in spade.state_dict().items()})
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def measure_step(latent: int, stablesr: bool) -> dict:
    host()
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from supir_restore.supir.host.stablesr import apply_stablesr, load_stablesr
    from supir_restore.supir.host.stablesr_restore import restore_stablesr
    from supir_restore.supir.stablesr.sampling import StableSRSettings
    torch.set_grad_enabled(False)
    config = comfy.supported_models.SD20(dict(SD21_UNET))
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_patcher.ModelPatcher(random_(config.get_model({})), mm.get_torch_device(),
                                             mm.unet_offload_device())
    lr = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    if stablesr:
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_stablesr_full.safetensors")
        model = apply_stablesr(model, load_stablesr(full_stablesr_file(path), "fp32"), lr)
    context = [[torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(1)), {}]]

    def step():
        start = time.perf_counter()
        restore_stablesr(model, context, context, lr, 0, StableSRSettings("ddpm", 2, "lr_latent"),
                         disable_pbar=True)  # two DDPM steps = two model calls
        return (time.perf_counter() - start) / 2
    step()
    baseline = status_mb("VmRSS")
    reset_peak()
    times = [step() for _ in range(3)]
    return {"latent": latent, "stablesr": stablesr, "step_s": statistics.median(times),
            "peak_mb": status_mb("VmHWM"), "loaded_mb": baseline}


def measure_tiled(size: int) -> dict:
    host()
    import torch
    from stablesr_helpers import stablesr_file
    from supir_restore.supir.host.stablesr import apply_stablesr, load_stablesr
    from supir_restore.supir.host.stablesr_restore import restore_stablesr
    from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation
    from supir_restore.supir.stablesr.sampling import StableSRSettings
    from tiny_models import tiny_sd21, tiny_vae
    model, vae = tiny_sd21(seed=0), tiny_vae(seed=3)
    sr = load_stablesr(stablesr_file(os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_stablesr_tiny.ckpt")),
                       "fp32")
    context = [[torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(1)), {}]]
    with torch.inference_mode():
        image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
        baseline = status_mb("VmRSS")
        reset_peak()
        lr = vae.encode_tiled(image, tile_x=512, tile_y=512, overlap=64)
        patched = apply_tiled_aggregation(apply_stablesr(model, sr, lr), 64, 32)
        latent = restore_stablesr(patched, context, context, lr, 0, StableSRSettings("ddpm", 2, "lr_latent"),
                                  disable_pbar=True)
        restored = vae.decode_tiled(latent, tile_x=64, tile_y=64, overlap=8)
    peak = status_mb("VmHWM")
    buffers = sum(t.numel() * t.element_size() for t in (image, restored, lr, latent)) / 2 ** 20
    return {"size": size, "peak_mb": peak, "baseline_mb": baseline, "buffers_mb": buffers,
            "working_mb": peak - baseline - buffers}


def one(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1] == "--one":
        kind, value, *rest = sys.argv[2:]
        print(json.dumps(measure_step(int(value), rest == ["stablesr"]) if kind == "step"
                         else measure_tiled(int(value))))
    elif sys.argv[1] == "step":
        for latent in [int(size) // 8 for size in sys.argv[2:] or [512]]:
            plain, patched = one("step", str(latent), "plain"), one("step", str(latent), "stablesr")
            print(f"{latent * 8}²: SD 2.1 UNet {plain['step_s']:.2f} s/step, peak {plain['peak_mb']:.0f} MB; "
                  f"with StableSR {patched['step_s']:.2f} s/step (x{patched['step_s'] / plain['step_s']:.2f}), "
                  f"peak {patched['peak_mb']:.0f} MB (+{patched['peak_mb'] - plain['peak_mb']:.0f} MB)", flush=True)
    elif sys.argv[1] == "tiled":
        rows = []
        for size in (1024, 2048, 4096):
            rows.append(r := one("tiled", str(size)))
            print(f"{size}²: peak RSS {r['peak_mb']:.0f} MB, after model load {r['baseline_mb']:.0f} MB, image "
                  f"buffers {r['buffers_mb']:.0f} MB, working memory {r['working_mb']:.0f} MB", flush=True)
        print(f"growth of working memory 1024² -> 4096²: {rows[-1]['working_mb'] / rows[0]['working_mb']:.2f}x")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
