"""Time per model call: the pack's patched ComfyUI UNet beside the official SUPIR and StableSR code (issue 25).

Opt-in against the official code, imported at run time from checkouts named by environment variables (nothing of
it is in this repository): SUPIR_SOURCE (Fanghua-Yu/SUPIR: GLVControl + LightGLVUNet from SUPIR/modules/SUPIR_v0.py)
and STABLESR_SOURCE (IceClear/StableSR: UNetModelDualcondV2 + EncoderUNetModelWT, imported as the official-code
parity test does). Both sides run the same random weights, made in the official layouts at full width (SDXL for
SUPIR, SD 2.1 for StableSR) and handed to the pack's side without copying, fp32 on the CPU.

``supir trunk``: the control trunk, official GLVControl vs the pack's ControlTrunk (on ComfyUI's ops).
``supir unet``: the official LightGLVUNet (UNet + adaptors, given control features) vs ComfyUI's SDXL UNet patched
by SUPIR Apply Control with the trunk replaced by the same features, the plain ComfyUI UNet, and the adaptors alone
(each run on the inputs it gets in a patched call). SDXL's UNet and the trunk do not fit together in fp32 under the
memory limit of this machine, so the two parts run in separate processes; total = trunk + UNet with adaptors.
``stablesr``: the official encoder + UNetModelDualcondV2 vs ComfyUI's SD 2.1 UNet patched by Apply StableSR (whose
wrapper runs the pack's encoder), and the plain ComfyUI UNet.

Each process times every side in turn (interleaved rounds, the machine being shared), per latent size and thread
count, and prints the medians as JSON; the parent prints a table.

Run: SUPIR_SOURCE=... STABLESR_SOURCE=... COMFYUI_PATH=... python bench/model_call_speed.py [supir|stablesr]
     [--latents 32 48] [--threads 1 2] [--rounds 3] [--batch 2]
"""
import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
             "num_head_channels": 64, "use_temporal_attention": False, "use_temporal_resblock": False}
# options/SUPIR_v0.yaml, with the attention SUPIR uses where xformers is missing and no gradient checkpointing
OFFICIAL_SUPIR = dict(adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4,
                      out_channels=4, model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2,
                      channel_mult=[1, 2, 4], num_head_channels=64, use_spatial_transformer=True,
                      use_linear_in_transformer=True, transformer_depth=[1, 2, 10], context_dim=2048,
                      spatial_transformer_attn_type="softmax", legacy=False)


def host(comfy_attention: bool):
    """ComfyUI in-process on the CPU; unless ``comfy_attention``, with PyTorch's SDPA attention as the official code
    uses (ComfyUI's CPU default is its sub-quadratic attention, which also reads the free memory at every call)."""
    sys.path.insert(0, os.path.abspath(os.environ["COMFYUI_PATH"]))
    from comfy.cli_args import args
    args.use_pytorch_cross_attention = not comfy_attention
    sys.modules["supir_restore"] = types.ModuleType("supir_restore")
    sys.modules["supir_restore"].__path__ = [REPO]
    sys.path.insert(0, os.path.join(REPO, "tests", "host"))
    import host_env
    host_env.setup(os.environ["COMFYUI_PATH"])
    import torch
    torch.set_grad_enabled(False)


def random_(module, seed=0):
    """Materialise a module built on the meta device with random weights (speed does not depend on the values)."""
    import torch
    module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for p in [*module.parameters(), *module.buffers()]:
        p.normal_(0, 0.02, generator=g)
    return module.eval()


def official_supir():
    """SUPIR/modules/SUPIR_v0.py of the SUPIR_SOURCE checkout, without running the packages' __init__ (which import
    the training and captioning stacks)."""
    source = os.environ["SUPIR_SOURCE"]
    try:
        import omegaconf.listconfig  # noqa: F401
    except ImportError:  # the constructors only test isinstance(..., ListConfig): a stand-in class will do
        stand_in = types.ModuleType("omegaconf.listconfig")
        stand_in.ListConfig = type("ListConfig", (list,), {})
        sys.modules["omegaconf"] = types.ModuleType("omegaconf")
        sys.modules["omegaconf.listconfig"] = sys.modules["omegaconf"].listconfig = stand_in
        sys.modules["omegaconf"].ListConfig = stand_in.ListConfig
    for name in ("sgm", "sgm.modules", "sgm.modules.diffusionmodules", "SUPIR", "SUPIR.modules"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(source, *name.split("."))]
        sys.modules[name] = package
    return importlib.import_module("SUPIR.modules.SUPIR_v0")


def comfy_model(config_class, unet_config, weights):
    """A ComfyUI MODEL of ``unet_config`` built on the meta device with ``weights`` (official UNet names, shared)."""
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    config = config_class(dict(unet_config))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device="meta")
    model.diffusion_model.load_state_dict(weights, strict=True, assign=True)
    for name, buffer in model.named_buffers():  # model_sampling's tables are built on the CPU already
        assert buffer.device.type != "meta", name
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def timer(threads):
    import torch

    def run(fn):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


def interleaved(sides: dict, rounds: int, threads: int) -> dict:
    """Median seconds per call of each side, timed in turn ``rounds`` times after one warm-up call each."""
    run = timer(threads)
    for fn in sides.values():
        run(fn)
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            times[name].append(run(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def supir_pack_control(weights: dict):
    """The pack's SUPIRControl as SUPIR Load Model builds it (ComfyUI's ops, fp32), from the tensors given."""
    from supir_restore.supir.host.supir_loader import SUPIRModel, host_attention, managed_network
    from supir_restore.supir.model.control import SUPIRControl, TrunkConfig, adaptors_for
    trunk = TrunkConfig.for_unet(SDXL_UNET)
    patcher, compute_dtype = managed_network(
        lambda **kw: SUPIRControl(trunk, adaptors_for(trunk), attention=host_attention, **kw), weights, "fp32")
    return SUPIRModel(patcher, {}, compute_dtype, "bench")


def supir_control_shapes() -> dict:
    import torch
    from supir_restore.supir.model.control import SUPIRControl, TrunkConfig, adaptors_for
    trunk = TrunkConfig.for_unet(SDXL_UNET)
    with torch.device("meta"):
        return SUPIRControl(trunk, adaptors_for(trunk)).state_dict()


def inputs(batch, latent, context_dim, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, latent, latent, generator=g), torch.randn(batch, 77, context_dim, generator=g),
            torch.randn(batch, 2816, generator=g))


def meta(build):
    import torch
    with torch.device("meta"):
        return build()


def model_call(patcher, x, sigma, context, **cond):
    """One UNet call of a loaded (patched) MODEL as a sampler makes it, with its wrappers and options."""
    return patcher.model.apply_model(x, sigma, c_crossattn=context, **cond, transformer_options={
        **patcher.model_options["transformer_options"], "wrappers": patcher.wrappers})


def supir_trunk(latents, threads, rounds, batch):
    import torch
    import comfy.model_management as mm
    glv = random_(meta(lambda: official_supir().GLVControl(**OFFICIAL_SUPIR)))
    weights = {f"control_model.{k}": v for k, v in glv.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    weights.update({k: torch.randn(v.shape, generator=g) * 0.02 for k, v in supir_control_shapes().items()
                    if k.startswith("project_modules.")})
    supir = supir_pack_control(weights)
    mm.load_models_gpu([supir.patcher])
    ours = supir.control.control_model
    assert {p.data_ptr() for p in glv.parameters()} == {p.data_ptr() for p in ours.parameters()}  # shared
    rows = []
    for latent in latents:
        x, context, y = inputs(batch, latent, 2048)
        hint, t = torch.randn_like(x), torch.full((batch,), 500.0)
        for n in threads:
            rows.append({"latent": latent, "threads": n, **interleaved({
                "official": lambda: glv(hint, t, x, context, y),  # GLVControl(x=hint, timesteps, xt, ...)
                "pack": lambda: ours(x, hint, t, context, y)}, rounds, n)})
    return rows


def trunk_features(batch, latent):
    """Random control features of the trunk's shapes: one per input block, then the middle block's."""
    import torch
    from supir_restore.supir.model.control import TrunkConfig
    trunk = TrunkConfig.for_unet(SDXL_UNET)
    sizes = [latent]
    for spec in trunk.blocks:
        sizes.append(sizes[-1] // 2 if spec is None else sizes[-1])
    sizes.append(sizes[-1])
    g = torch.Generator().manual_seed(5)
    return [torch.randn(batch, c, s, s, generator=g) for c, s in zip(trunk.feature_channels, sizes)]


def adaptor_calls(modules, call):
    """(module, inputs) of every adaptor run in ``call()``."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args))) for m in modules]
    try:
        call()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def supir_unet(latents, threads, rounds, batch):
    import torch
    from torch import nn
    import comfy.model_management as mm
    import comfy.supported_models
    from supir_restore.supir.host.unet_patch import apply_supir
    unet = random_(meta(lambda: official_supir().LightGLVUNet(mode="XL-base", project_type="ZeroSFT",
                                                              project_channel_scale=2, **OFFICIAL_SUPIR)))
    sd = unet.state_dict()
    model = comfy_model(comfy.supported_models.SDXL, SDXL_UNET,
                        {k: v for k, v in sd.items() if not k.startswith("project_modules.")})
    # the trunk's tensors are allocated but never touched (no resident memory): its features are given
    weights = {k: torch.empty(v.shape) for k, v in supir_control_shapes().items() if k.startswith("control_model.")}
    weights.update({k: v for k, v in sd.items() if k.startswith("project_modules.")})
    supir = supir_pack_control(weights)

    class GivenFeatures(nn.Module):
        def forward(self, *args):
            return features
    supir.control.control_model = GivenFeatures()
    rows = []
    for latent in latents:
        x, context, y = inputs(batch, latent, 2048)
        features = trunk_features(batch, latent)
        patched = apply_supir(model, supir, torch.zeros(1, 4, latent, latent))
        mm.load_models_gpu([patched])
        sigma = torch.full((batch,), 5.0)
        t = model.get_model_object("model_sampling").timestep(sigma).float()
        adaptors = adaptor_calls(supir.control.project_modules, lambda: model_call(patched, x, sigma, context, y=y))
        for n in threads:
            rows.append({"latent": latent, "threads": n, **interleaved({
                "official": lambda: unet(x, t, context, y, control=features, control_scale=1),
                "pack": lambda: model_call(patched, x, sigma, context, y=y),
                "plain": lambda: model.model.apply_model(x, sigma, c_crossattn=context, y=y),
                "adaptors": lambda: [m(*args) for m, args in adaptors]}, rounds, n)})
    return rows


def stablesr(latents, threads, rounds, batch):
    import torch
    import comfy.model_management as mm
    import comfy.supported_models
    import test_stablesr_official as official
    from supir_restore.supir.host.stablesr import apply_stablesr, stablesr_from_state_dict
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from stablesr import SD21_UNET
    ldm, _ = official.official_model(unet=official.FULL_UNET, encoder=official.FULL_ENCODER)
    unet, encoder = ldm.model.diffusion_model, ldm.structcond_stage_model
    sd = unet.state_dict()
    model = comfy_model(comfy.supported_models.SD20, SD21_UNET, {k: v for k, v in sd.items() if ".spade." not in k})
    sr = stablesr_from_state_dict({**{f"model.diffusion_model.{k}": v for k, v in sd.items() if ".spade." in k},
                                   **{f"structcond_stage_model.{k}": v for k, v in encoder.state_dict().items()}},
                                  "bench", "fp32")
    rows = []
    for latent in latents:
        x, context, _ = inputs(batch, latent, 1024)
        lr = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(3))
        patched = apply_stablesr(model, sr, lr)
        mm.load_models_gpu([patched])
        sigma = torch.full((batch,), 5.0)
        t = model.get_model_object("model_sampling").timestep(sigma).float()
        scaled = model.get_model_object("latent_format").process_in(lr).expand(batch, -1, -1, -1)

        def official_call():
            return unet(x, t, context=context, struct_cond=encoder(scaled, t))
        for n in threads:
            rows.append({"latent": latent, "threads": n, **interleaved({
                "official": official_call,
                "pack": lambda: model_call(patched, x, sigma, context),
                "plain": lambda: model.model.apply_model(x, sigma, c_crossattn=context),
                "encoder": lambda: sr.net.encoder(scaled, t)}, rounds, n)})
    return rows


PARTS = {"supir_trunk": supir_trunk, "supir_unet": supir_unet, "stablesr": stablesr}


def measure(part, args) -> list:
    """One part in a fresh process (peak memory and thread pools of one part do not carry over)."""
    out = subprocess.run([sys.executable, __file__, "--part", part, "--latents", *map(str, args.latents),
                          "--threads", *map(str, args.threads), "--rounds", str(args.rounds),
                          "--batch", str(args.batch), *["--comfy-attention"] * args.comfy_attention],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def report_supir(args):
    trunk, unet = measure("supir_trunk", args), measure("supir_unet", args)
    print("latent threads | trunk: official pack ratio | UNet+adaptors: official pack ratio | total: official "
          "pack ratio | plain UNet, adaptors alone, pack UNet / (plain + adaptors)")
    for tr, un in zip(trunk, unet):
        official, ours = tr["official"] + un["official"], tr["pack"] + un["pack"]
        print(f"{tr['latent']:>3}² {tr['threads']} | {tr['official']:.3f} {tr['pack']:.3f} "
              f"{tr['pack'] / tr['official']:.3f}x | {un['official']:.3f} {un['pack']:.3f} "
              f"{un['pack'] / un['official']:.3f}x | {official:.3f} {ours:.3f} {ours / official:.3f}x | "
              f"{un['plain']:.3f} {un['adaptors']:.3f} {un['pack'] / (un['plain'] + un['adaptors']):.3f}x",
              flush=True)


def report_stablesr(args):
    print("latent threads | official pack ratio | plain UNet, encoder alone, pack / (plain + encoder)")
    for r in measure("stablesr", args):
        print(f"{r['latent']:>3}² {r['threads']} | {r['official']:.3f} {r['pack']:.3f} "
              f"{r['pack'] / r['official']:.3f}x | {r['plain']:.3f} {r['encoder']:.3f} "
              f"{r['pack'] / (r['plain'] + r['encoder']):.3f}x", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", nargs="?", choices=["supir", "stablesr"])
    parser.add_argument("--part", choices=list(PARTS))
    parser.add_argument("--latents", type=int, nargs="+", default=[32, 48])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--comfy-attention", action="store_true",
                        help="ComfyUI's default attention for the device instead of PyTorch's SDPA")
    args = parser.parse_args()
    if args.part:
        host(args.comfy_attention)
        print(json.dumps(PARTS[args.part](args.latents, args.threads, args.rounds, args.batch)))
        return
    needed = {"supir": "SUPIR_SOURCE", "stablesr": "STABLESR_SOURCE"}
    for system in [args.system] if args.system else list(needed):
        if not os.path.isdir(os.environ.get(needed[system], "")):
            raise SystemExit(f"{system}: set {needed[system]} to a checkout of the official code (see the top of "
                             f"this file)")
        print(f"{system}: batch {args.batch}, fp32, {args.rounds} interleaved rounds, medians in seconds per call; "
              f"the pack on {'ComfyUI' if args.comfy_attention else 'PyTorch SDPA'} attention")
        (report_supir if system == "supir" else report_stablesr)(args)


if __name__ == "__main__":
    main()
