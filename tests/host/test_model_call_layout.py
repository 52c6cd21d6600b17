"""Tier 2: the pack's networks hand every convolution a contiguous (NCHW) tensor, the layout ComfyUI's own UNet
works in, and copy no weight per call when storage and compute dtype agree.

A convolution given a channels-last or strided input makes PyTorch convert the weight to that layout on every call
(the output then keeps the layout, so every later convolution repeats the conversion): at SDXL widths that was a
fifth of the control trunk's time. Weight-sized copies are found with the profiler, which sees the copies made
inside the convolution kernels as well as ComfyUI's weight casts."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import comfy.model_management as mm  # noqa: E402

from host_helpers import smooth_photo  # noqa: E402
from stablesr_helpers import cfw_state_dict, lr_latent, patched_out  # noqa: E402
from supir_restore.supir.host.cfw_decode import cfw_decode, load_cfw  # noqa: E402
from supir_restore.supir.host.stablesr import apply_stablesr  # noqa: E402
from supir_restore.supir.host.supir_loader import load_supir  # noqa: E402
from supir_restore.supir.host.tiled_aggregation import apply_tiled_aggregation  # noqa: E402
from supir_restore.supir.host.tiled_vae import decode_exact, encode_exact  # noqa: E402
from supir_restore.supir.host.unet_patch import apply_supir  # noqa: E402
from tiny_models import tiny_sd21  # noqa: E402


CONVOLUTIONS = (torch.ops.aten.convolution, torch.ops.aten.conv1d, torch.ops.aten.conv2d)  # conv2d: inference mode


class ConvolutionInputs(TorchDispatchMode):
    """Records the shape and strides of every convolution input that is not contiguous."""

    def __init__(self):
        super().__init__()
        self.count, self.strided = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in CONVOLUTIONS:
            self.count += 1
            if not args[0].is_contiguous():
                self.strided.append((tuple(args[0].shape), args[0].stride()))
        return func(*args, **(kwargs or {}))


def weight_sized_copies(run, modules) -> list:
    """The copies ``run()`` makes of a tensor shaped like a (2-D or larger) parameter of ``modules``."""
    shapes = {tuple(p.shape) for m in modules for p in m.parameters() if p.ndim >= 2}
    with torch.profiler.profile(record_shapes=True) as prof:
        run()
    return [(e.name, tuple(e.input_shapes[0])) for e in prof.events()
            if e.name == "aten::copy_" and e.input_shapes and tuple(e.input_shapes[0]) in shapes]


def assert_no_layout_waste(run, modules):
    run()  # first call: loading, lazy initialisation
    with ConvolutionInputs() as convs:
        run()
    assert convs.count > 0
    assert convs.strided == [], f"{len(convs.strided)} of {convs.count} convolutions got a strided input"
    copies = weight_sized_copies(run, modules)
    assert copies == [], f"{len(copies)} weight-sized copies: {copies[:8]}"


def sdxl_call(patched, batch=2, size=(8, 8)):
    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(batch, 4, *size, generator=g), torch.randn(batch, 77, 2048, generator=g)
    y = torch.randn(batch, 2816, generator=g)
    return lambda: patched_out(patched, x, torch.full((batch,), 7.0), context, y=y)


@pytest.mark.parametrize("load", ["full", "low_vram"])
def test_supir_call(tiny_model, tiny_supir_file, load):
    """Fully loaded, and partly loaded in low-VRAM mode, where ComfyUI's ops cast every weight at compute (a cast
    to the storage dtype on the same device must not copy)."""
    supir = load_supir(tiny_supir_file, "fp32")
    patched = apply_supir(tiny_model, supir, torch.randn(1, 4, 8, 8))
    if load == "low_vram":
        mm.unload_all_models()
        supir.patcher.load(supir.patcher.load_device, lowvram_model_memory=1, force_patch_weights=False,
                           full_load=False)
        assert any(getattr(m, "comfy_cast_weights", False) for m in supir.control.modules())
    try:
        assert_no_layout_waste(sdxl_call(patched), [supir.control, tiny_model.model])
    finally:
        supir.patcher.detach()


def test_supir_tiled_aggregation_call(tiny_model, tiny_supir):
    patched = apply_tiled_aggregation(apply_supir(tiny_model, tiny_supir, torch.randn(1, 4, 12, 16)), 8, 4)
    assert_no_layout_waste(sdxl_call(patched, size=(12, 16)), [tiny_supir.control, tiny_model.model])


def test_stablesr_call(stablesr):
    model = tiny_sd21(seed=0)
    patched = apply_stablesr(model, stablesr, lr_latent())
    g = torch.Generator().manual_seed(1)
    # batch 3: with 2, the tokens of an attention layer ([256, 32]) look like a feed-forward weight
    x, context = torch.randn(3, 4, 8, 16, generator=g), torch.randn(3, 5, 1024, generator=g)
    assert_no_layout_waste(lambda: patched_out(patched, x, torch.full((3,), 7.0), context),
                           [stablesr.net, model.model])


def test_exact_tiled_vae(tiny_vae):
    image = smooth_photo(64, 64, seed=2)
    latent = encode_exact(tiny_vae, image, 32)
    modules = [tiny_vae.first_stage_model]
    assert_no_layout_waste(lambda: encode_exact(tiny_vae, image, 32), modules)
    assert_no_layout_waste(lambda: decode_exact(tiny_vae, latent, 4), modules)


@pytest.mark.parametrize("tile_size", [0, 64])
def test_cfw_decode(tmp_path, tiny_vae, tile_size):
    path = tmp_path / "cfw.ckpt"
    torch.save({"state_dict": cfw_state_dict(tiny_vae)}, path)
    cfw = load_cfw(str(path))
    z = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(0))
    lr = smooth_photo(96, 96, seed=1)
    assert_no_layout_waste(lambda: cfw_decode(cfw, tiny_vae, z, lr, 0.5, "vae", tile_size),
                           [cfw.layers, tiny_vae.first_stage_model])


def test_supir_call_with_forced_channels_last(monkeypatch, tiny_supir_file):
    """With --force-channels-last ComfyUI lays out its UNet's weights channels-last; the SUPIR network follows, so
    no convolution re-lays a weight out (inputs may then come in either layout, as in the host's own UNet)."""
    from comfy.cli_args import args
    from tiny_models import tiny_sdxl
    monkeypatch.setattr(args, "force_channels_last", True)
    model, supir = tiny_sdxl(seed=0), load_supir(tiny_supir_file, "fp32")
    conv = supir.control.control_model.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    run = sdxl_call(apply_supir(model, supir, torch.randn(1, 4, 8, 8)))
    run()
    copies = weight_sized_copies(run, [supir.control, model.model])
    assert copies == [], f"{len(copies)} weight-sized copies: {copies[:8]}"
