"""Tier 2: seams of ComfyUI's tiled VAE, and the exact tiled VAE (supir/tiled_vae.py), on the tiny SDXL-layout VAE.

ComfyUI's tiled VAE differs from the whole-image VAE for three reasons: each tile is normalised with its own
GroupNorm statistics, the middle attention sees only the tile, and the convolutions see zero padding at tile
borders instead of the neighbouring content. The tests measure the first against the other two by running
the same tiled VAE with every GroupNorm fixed to the statistics its input has over the whole image.
"""
import math
import types
from contextlib import contextmanager

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from comfy.ldm.modules.diffusionmodules.model import AttnBlock  # noqa: E402

from helpers import assert_close_relative  # noqa: E402
from supir_restore.nodes.supir_nodes import SUPIRLQEncode  # noqa: E402
from supir_restore.supir.host.lq_encode import encode_lq  # noqa: E402
from supir_restore.supir.host.tiled_vae import UnsupportedVAEError, decode_exact, encode_exact  # noqa: E402
from supir_restore.supir.tiling.exact_vae import layer_halos  # noqa: E402


def photograph(name: str, size: int) -> torch.Tensor:
    """A scikit-image sample as IMAGE [1, size, size, 3] (box-downscaled)."""
    a = getattr(skimage.data, name)()
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    t = torch.from_numpy(a.copy()).float().movedim(-1, 0)[None] / 255
    return F.interpolate(t, size=(size, size), mode="area").movedim(1, -1)


def half_dark_half_bright(size: int) -> torch.Tensor:
    x = 0.1 * torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    x[:, :, size // 2:] += 0.85
    return x


IMAGES = {
    "texture": lambda: photograph("gravel", 128),  # statistically the same everywhere
    "halves": lambda: half_dark_half_bright(128),
    "photograph": lambda: photograph("camera", 128),  # flat sky above, a man and a camera below
}


def relative_rms_error(tiled: torch.Tensor, whole: torch.Tensor) -> float:
    """The RMS of the tiling error over the whole image's RMS contrast: how visible the seams and shifts are."""
    return float((tiled - whole).norm() / (whole - whole.mean()).norm())


@contextmanager
def whole_image_statistics(network: torch.nn.Module, run_whole):
    """Run ``run_whole()`` (the untiled pass) recording every GroupNorm input's per-group mean and variance;
    inside the block those GroupNorms normalise every tile with these whole-image statistics."""
    norms = [m for m in network.modules() if isinstance(m, torch.nn.GroupNorm)]
    stats = {}

    def record(norm, args):
        x = args[0].float().reshape(args[0].shape[0], norm.num_groups, -1)
        stats[norm] = (x.mean(-1), x.var(-1, unbiased=False))

    hooks = [n.register_forward_pre_hook(record) for n in norms]
    try:
        run_whole()
    finally:
        for h in hooks:
            h.remove()

    def fixed(norm, x):
        mean, var = (s.repeat_interleave(norm.num_channels // norm.num_groups, -1)[..., None, None]
                     for s in stats[norm])
        return (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]

    for n in norms:
        n.forward = lambda x, _n=n: fixed(_n, x)
    try:
        yield
    finally:
        for n in norms:
            del n.forward


def comfy_tiled_errors(vae, image, tile: int) -> dict:
    """Relative errors of ComfyUI's tiled encode and decode (overlap a quarter tile) against the whole-image
    ones, with per-tile ('local') and whole-image ('global') GroupNorm statistics."""
    model = vae.first_stage_model
    out = {}
    with torch.inference_mode():
        whole = vae.encode(image)
        with whole_image_statistics(model.encoder, lambda: vae.encode(image)):
            out["encode", "global"] = relative_rms_error(vae.encode_tiled(image, tile, tile, tile // 4), whole)
        out["encode", "local"] = relative_rms_error(vae.encode_tiled(image, tile, tile, tile // 4), whole)
        decoded = vae.decode(whole)
        with whole_image_statistics(model.decoder, lambda: vae.decode(whole)):
            out["decode", "global"] = relative_rms_error(vae.decode_tiled(whole, tile // 8, tile // 8, tile // 32),
                                                     decoded)
        out["decode", "local"] = relative_rms_error(vae.decode_tiled(whole, tile // 8, tile // 8, tile // 32), decoded)
    return out


def test_per_tile_statistics_cost_nothing_on_a_texture_and_dominate_on_uneven_images(tiny_vae):
    errors = {name: comfy_tiled_errors(tiny_vae, make(), 96) for name, make in IMAGES.items()}
    excess = {name: {part: e[part, "local"] / e[part, "global"] for part in ("encode", "decode")}
              for name, e in errors.items()}
    # texture: every tile's statistics are the image's, so normalising per tile changes nothing measurable
    assert excess["texture"]["encode"] < 1.1 and excess["texture"]["decode"] < 1.1, errors["texture"]
    # a dark half and a bright half, or a flat sky over detail: per-tile statistics add 40-70 % to the error
    assert excess["halves"]["encode"] > 1.4 and excess["photograph"]["encode"] > 1.4, errors
    assert excess["photograph"]["decode"] > 1.15, errors["photograph"]
    assert errors["photograph"]["encode", "local"] > 1.5 * errors["texture"]["encode", "local"], errors


def test_comfy_tiled_error_falls_with_the_tile_size(tiny_vae):
    """The border part of the error (zero padding instead of the neighbours, attention within the tile) falls
    as tiles grow against the encoder's reach (85 px here), on any content."""
    for make in (IMAGES["texture"], IMAGES["photograph"]):
        image = make()
        with torch.inference_mode():
            whole = tiny_vae.encode(image)
            errors = [relative_rms_error(tiny_vae.encode_tiled(image, tile, tile, tile // 4), whole)
                      for tile in (64, 128)]
        assert errors[0] > 1.8 * errors[1], errors


def odd_image(height=40, width=264, seed=0):
    """Uneven content (a bright band on a dark ground) whose latent has odd sides."""
    image = 0.2 * torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(seed))
    image[:, :, width // 3: width // 2] += 0.75
    return image


def test_exact_tiled_vae_equals_the_whole_image_vae(tiny_vae):
    image = odd_image()
    with torch.inference_mode():
        whole = tiny_vae.encode(image)
        decoded = tiny_vae.decode(whole)
        comfy_tiled = tiny_vae.encode_tiled(image, 64, 64, 16)
    tiled = encode_exact(tiny_vae, image, 128)  # cores of 128, 128 and 8 px; windows narrower than the image
    assert whole.shape == tiled.shape == (1, 4, 5, 33)
    # the same float32 convolutions on windows of the image; whole-image GroupNorm statistics summed per tile
    assert_close_relative(tiled, whole, 1e-4)
    assert relative_rms_error(comfy_tiled, whole) > 0.1  # ComfyUI's tiles are far off
    assert_close_relative(decode_exact(tiny_vae, whole, 16), decoded, 1e-4)


def test_exact_tiled_vae_memory_is_bounded_by_the_tile(tiny_vae):
    """The largest input any encoder convolution sees is a tile window (core + halo on each side; + 1 for the
    downsampling's padding) however wide the image; the whole-image encoder's grows with it."""
    model = tiny_vae.first_stage_model
    with torch.inference_mode():
        halo = layer_halos(model.encode, model.encoder, torch.zeros(1, 3, 32, 32), 8, (AttnBlock,))[-1]
    assert halo == 88  # the tiny SDXL-layout encoder's convolutions reach 85 px
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:])))
             for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    largest = {}
    try:
        for width in (336, 672):
            image = odd_image(height=8, width=width)
            shapes.clear()
            encode_exact(tiny_vae, image, 64)
            tiled = max(shapes, key=math.prod)
            shapes.clear()
            with torch.inference_mode():
                tiny_vae.encode(image)
            largest[width] = tiled, max(shapes, key=math.prod)
    finally:
        for h in hooks:
            h.remove()
    assert largest[336][0] == largest[672][0] == (9, 64 + 2 * halo + 1)
    assert largest[336][1] == (9, 337) and largest[672][1] == (9, 673)


def test_unsupported_vae_is_refused():
    not_kl = types.SimpleNamespace(throw_exception_if_invalid=lambda: None, first_stage_model=torch.nn.Identity())
    with pytest.raises(UnsupportedVAEError, match="tiled_vae = comfy"):
        encode_exact(not_kl, torch.rand(1, 64, 64, 3), 64)


def test_lq_encode_node_with_the_exact_tiled_vae(tiny_supir, tiny_vae):
    image = odd_image(height=40, width=136, seed=3)
    with torch.inference_mode():
        whole = encode_lq(tiny_supir, tiny_vae, image)
        latent, stage1, _ = SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 64, "exact").result
    hint = latent["samples"]
    assert_close_relative(hint, whole[0], 1e-4)  # exact tiling: float32 rounding in another order, as above
    assert_close_relative(stage1, whole[1], 1e-3)  # the decode of that hint amplifies its rounding
    one_tile = encode_lq(tiny_supir, tiny_vae, image, tile_size=512, tiled_vae="exact")  # the plain VAE
    torch.testing.assert_close(one_tile[0], whole[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="tiled_vae 'fast' is not one of comfy, exact"):
        encode_lq(tiny_supir, tiny_vae, image, tile_size=64, tiled_vae="fast")
