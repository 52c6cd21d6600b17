"""Memory ledger: resident memory while loading full-size models in the official layouts, per storage dtype, and
during one restore step (issue 22).

``files DIR``: writes full-size random weight files (values do not change memory): an SDXL UNet as an fp16
safetensors file (as the UNet inside SDXL checkpoints is stored), ``SUPIR-v0Q.ckpt`` (fp32 pickle, the official
layout of tests/data/supir-v0-layout.json), ``SUPIR-v0Q_fp16.safetensors`` (converted by the pack), StableSR's
SR parts and an SD 2.1 UNet, and the CFW file (fp32 pickles, the layouts of tests/data/stablesr-layout.json).

``load DIR``: each component loaded in a fresh process per storage dtype (fp32, fp16, bf16, fp8_e4m3fn) through
what users run: the UNets through ComfyUI's ``load_diffusion_model`` with ``weight_dtype`` (UNETLoader's path,
as ``--fp8_e4m3fn-unet`` sets it), SUPIR, StableSR and CFW through the pack's loaders. Reported per load: peak RSS
during the load above the process before it (VmHWM, file-backed pages included) and what stays resident after it
(anonymous and file-backed).

``step DIR WORKFLOW [LATENT ...]``: one sampling step of a shipped workflow per storage dtype at two latent sizes:
peak RSS of the whole process and the step's working memory above the loaded models. ``basic``: one SUPIR-patched
call on SDXL + SUPIR over the whole latent (batch 2: CFG's two halves; 64² and 96² latents); ``x4``: the same
through tiled aggregation with 512 px tiles at a 256 px stride, the smallest automatic SUPIR tile (96² and 128²
latents: 4 and 9 tiles); ``stablesr``: two DDPM steps (the fewest its schedule takes; time per step) of
SD 2.1 + StableSR at CFG 1 with its official 512 px tiles (64² and 128²: 1 and 9 tiles).

``budgets DIR [MB ...]``: the automatic tiles against measurement on this device: for each free-memory budget
(default 2, 3 and 4 GiB above the loaded models, SDXL + SUPIR stored in fp8), the sampling tile they choose for a
2048 px image with the working memory of one SUPIR call on it, and that of a call on the next tile up, each in a
fresh process with ComfyUI's free memory set to the budget.

Run: COMFYUI_PATH=/path/to/ComfyUI python bench/memory_ledger.py files|load|step|budgets DIR ...   (CPU, fp32 compute)
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proc_memory import reset_peak, status_mb  # noqa: E402
from stablesr import REPO, SD21_UNET, host  # noqa: E402

DTYPES = ("fp32", "fp16", "bf16", "fp8_e4m3fn")
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
FILES = {"sdxl": "sdxl_unet_fp16.safetensors", "supir_ckpt": "SUPIR-v0Q.ckpt",
         "supir_fp16": "SUPIR-v0Q_fp16.safetensors", "stablesr": "stablesr_sr.ckpt",
         "sd21": "sd21_unet_fp16.safetensors", "cfw": "vqgan_cfw_00011.ckpt"}


def rss() -> dict:
    """Resident memory now, in MB: anonymous (the process's own), file-backed and shared (mapped files)."""
    with open("/proc/self/status") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f if line.startswith("Rss")}
    return {"anon_mb": fields["RssAnon"], "file_mb": fields["RssFile"], "shmem_mb": fields["RssShmem"]}


def random_tensors(shapes: dict, dtype, seed: int) -> dict:
    import torch
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}


def unet_shapes(config_class, unet_config) -> dict:
    import torch
    import comfy.supported_models
    cfg = getattr(comfy.supported_models, config_class)(dict(unet_config))
    cfg.set_inference_dtype(torch.float16, None)
    with torch.device("meta"):
        model = cfg.get_model({}, device="meta")
    return {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}


def write_files(folder: str) -> None:
    host()
    import torch
    from supir_restore.supir.convert import convert_file
    from supir_restore.supir.weights import write_new_safetensors
    os.makedirs(folder, exist_ok=True)
    path = {k: os.path.join(folder, v) for k, v in FILES.items()}
    with open(os.path.join(REPO, "tests", "data", "supir-v0-layout.json")) as f:
        supir = json.load(f)["layout"]
    with open(os.path.join(REPO, "tests", "data", "stablesr-layout.json")) as f:
        stablesr = json.load(f)
    if not os.path.exists(path["sdxl"]):
        write_new_safetensors(path["sdxl"], random_tensors(unet_shapes("SDXL", SDXL_UNET), torch.float16, 0))
    if not os.path.exists(path["sd21"]):
        write_new_safetensors(path["sd21"], random_tensors(unet_shapes("SD20", SD21_UNET), torch.float16, 1))
    if not os.path.exists(path["supir_ckpt"]):
        torch.save({"state_dict": random_tensors(supir, torch.float32, 2)}, path["supir_ckpt"])
    if not os.path.exists(path["supir_fp16"]):
        convert_file(path["supir_ckpt"], path["supir_fp16"], "fp16")
    if not os.path.exists(path["stablesr"]):
        shapes = {**stablesr["stablesr_ckpt"]["unet_spade_only"], **stablesr["stablesr_ckpt"]["structcond_stage_model"]}
        torch.save({"state_dict": random_tensors(shapes, torch.float32, 3)}, path["stablesr"])
    if not os.path.exists(path["cfw"]):
        torch.save({"state_dict": random_tensors(stablesr["vqgan_cfw_ckpt"], torch.float32, 4)}, path["cfw"])
    for name in FILES.values():
        print(f"{name}: {os.path.getsize(os.path.join(folder, name)) / 1e6:,.0f} MB")


def load(folder: str, component: str, dtype: str):
    """Load ``component`` from ``folder`` at ``dtype``; returns what stays loaded."""
    if component in ("sdxl", "sd21"):
        import comfy.sd
        from supir_restore.supir.weights import STORAGE_DTYPES
        return comfy.sd.load_diffusion_model(os.path.join(folder, FILES[component]),
                                             model_options={"dtype": STORAGE_DTYPES[dtype]})
    if component in ("supir_ckpt", "supir_fp16"):
        from supir_restore.supir.host.supir_loader import load_supir
        return load_supir(os.path.join(folder, FILES[component]), dtype)
    if component == "stablesr":
        from supir_restore.supir.host.stablesr import load_stablesr
        return load_stablesr(os.path.join(folder, FILES[component]), dtype)
    from supir_restore.supir.host.cfw_decode import load_cfw
    return load_cfw(os.path.join(folder, FILES[component]))  # the fusion layers at ComfyUI's VAE dtype


def measure_load(folder: str, component: str, dtype: str) -> dict:
    host()
    import torch
    torch.set_grad_enabled(False)
    before = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    loaded = load(folder, component, dtype)
    seconds = time.perf_counter() - start
    peak, after, split = status_mb("VmHWM"), status_mb("VmRSS"), rss()
    del loaded
    return {"component": component, "dtype": dtype, "load_peak_mb": peak - before, "resident_mb": after - before,
            **split, "seconds": seconds}


def model_call(patcher, x, options=None, **conds):
    """One model call at sigma 10 through ``patcher``'s wrappers (``options``: transformer options to add)."""
    import torch
    return patcher.model.apply_model(x, torch.full((x.shape[0],), 10.0),
                                     transformer_options={**patcher.model_options["transformer_options"],
                                                          "wrappers": patcher.wrappers, **(options or {})}, **conds)


TILE, STRIDE = 64, 32  # latent px: SUPIR's smallest automatic tile and StableSR's official one (512 px), half overlap
STEP_SIZES = {"basic": (64, 96), "x4": (96, 128), "stablesr": (64, 128)}


def supir_step(model, supir, latent: int, tiled: bool):
    """SDXL ``model`` patched with ``supir`` (and tiled), and one model call on CFG's two halves."""
    import torch
    from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation
    from supir_restore.supir.host.unet_patch import apply_supir
    hint = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    patched = apply_supir(model, supir, hint)
    if tiled:
        patched = apply_tiled_aggregation(patched, TILE, STRIDE)
    x = torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 77, 2048, generator=torch.Generator().manual_seed(2))
    y = torch.randn(2, 2816, generator=torch.Generator().manual_seed(3))

    return patched, lambda: model_call(patched, x, c_crossattn=context, y=y), 1


def stablesr_step(model, sr, latent: int):
    """SD 2.1 ``model`` with StableSR ``sr``, patched and tiled as StableSR Upscale, and two DDPM steps at CFG 1 (the
    fewest its schedule takes)."""
    import torch
    from supir_restore.supir.host.stablesr import apply_stablesr
    from supir_restore.supir.host.stablesr_restore import restore_stablesr
    from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation
    from supir_restore.supir.stablesr.sampling import StableSRSettings
    lr = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    patched = apply_tiled_aggregation(apply_stablesr(model, sr, lr), TILE, STRIDE)
    context = [[torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(1)), {}]]

    def call():
        restore_stablesr(patched, context, context, lr, 0, StableSRSettings("ddpm", 2, "lr_latent"),
                         disable_pbar=True)
    return patched, call, 2


def measure_step(folder: str, workflow: str, dtype: str, latent: int) -> dict:
    host()
    import torch
    import comfy.model_management as mm
    torch.set_grad_enabled(False)
    before = status_mb("VmRSS")
    if workflow == "stablesr":
        patched, call, steps = stablesr_step(load(folder, "sd21", dtype), load(folder, "stablesr", dtype), latent)
    else:
        patched, call, steps = supir_step(load(folder, "sdxl", dtype), load(folder, "supir_fp16", dtype), latent,
                                          workflow == "x4")
    mm.load_models_gpu([patched])
    loaded = status_mb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    call()
    seconds = (time.perf_counter() - start) / steps
    peak = status_mb("VmHWM")
    return {"workflow": workflow, "dtype": dtype, "latent": latent, "loaded_mb": loaded - before,
            "peak_mb": peak - before, "step_working_mb": peak - loaded, "seconds": seconds}


def measure_budget(folder: str, budget_mb: float, larger: bool) -> dict:
    """SDXL + SUPIR stored in fp8 with the free memory set to ``budget_mb`` above what they hold: the sampling tile
    automatic tiles choose for a 2048 px image (``larger``: one step up from it), and the working memory of one
    call on that tile (CFG's two halves). ComfyUI's sub-quadratic attention sizes its chunks from the same free
    memory, as it would on a machine with that much free."""
    host()
    import torch
    import comfy.model_management as mm
    from supir_restore.supir.host.auto_tiles import sampling_tile
    from supir_restore.supir.tiling.memory import TILE_STEP
    torch.set_grad_enabled(False)
    model, supir = load(folder, "sdxl", "fp8_e4m3fn"), load(folder, "supir_fp16", "fp8_e4m3fn")
    patched, _, _ = supir_step(model, supir, TILE, False)
    mm.load_models_gpu([patched])
    free = budget_mb * 2 ** 20 + mm.extra_reserved_memory()
    mm.get_free_memory = lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free
    choice = sampling_tile(256, 256, 2, patched.model, {"wrappers": patched.wrappers}, mm.get_torch_device())
    tile = choice.tile + (TILE_STEP if larger else 0)
    _, call, _ = supir_step(model, supir, tile, False)
    loaded = status_mb("VmRSS")
    reset_peak()
    call()
    return {"budget_mb": budget_mb, "tile": tile, "chosen": not larger, "predicted_mb": choice.predicted / 2 ** 20
            if not larger else None, "working_mb": status_mb("VmHWM") - loaded}


def one(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1], "args": args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if sys.argv[1] == "--one":
        kind, *rest = sys.argv[2:]
        if kind == "budget":
            print(json.dumps(measure_budget(rest[0], float(rest[1]), rest[2] == "larger")))
        else:
            print(json.dumps(measure_load(*rest) if kind == "load" else measure_step(*rest[:3], int(rest[3]))))
    elif sys.argv[1] == "files":
        write_files(sys.argv[2])
    elif sys.argv[1] == "load":
        components = sys.argv[3:] or ["sdxl", "supir_ckpt", "supir_fp16", "sd21", "stablesr", "cfw"]
        for component in components:
            for dtype in DTYPES if component != "cfw" else ("auto",):
                print(json.dumps(one("load", sys.argv[2], component, dtype)), flush=True)
    elif sys.argv[1] == "step":
        folder, workflow = sys.argv[2:4]
        for latent in (int(v) for v in sys.argv[4:] or STEP_SIZES[workflow]):
            for dtype in DTYPES:
                print(json.dumps(one("step", folder, workflow, dtype, str(latent))), flush=True)
    elif sys.argv[1] == "budgets":
        for budget in sys.argv[3:] or ("2048", "3072", "4096"):
            for which in ("chosen", "larger"):
                print(json.dumps(one("budget", sys.argv[2], budget, which)), flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
