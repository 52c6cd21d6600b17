"""Tier 2: stage-1 encoding with the denoise encoder through ComfyUI's VAE class."""
import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import nodes as comfy_nodes  # noqa: E402  (ComfyUI's stock nodes)
from helpers import assert_close_relative, relative_error  # noqa: E402
from supir_restore.supir.weights import WeightsFileError  # noqa: E402
from supir_restore.supir.host.lq_encode import encode_lq, lq_vae  # noqa: E402
from supir_restore.supir.image.io import as_rgb  # noqa: E402


def lq_image(h=64, w=48, c=3, seed=0):
    return torch.rand(1, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_hint_is_the_denoise_encoder_posterior_mode(tiny_supir, tiny_vae):
    image = lq_image()
    hint, stage1 = encode_lq(tiny_supir, tiny_vae, image)
    fsm = tiny_vae.first_stage_model
    encoder = type(fsm.encoder)(**_encoder_kwargs(tiny_vae))
    encoder.load_state_dict(tiny_supir.denoise_encoder)
    with torch.no_grad():
        moments = fsm.quant_conv(encoder(image.movedim(-1, 1) * 2 - 1))
    expected = moments[:, :4]  # mode = mean of the diagonal Gaussian
    assert_close_relative(hint, expected, 1e-5)  # the same float32 encoder, run through ComfyUI's VAE
    assert hint.shape == (1, 4, 8, 6)
    torch.testing.assert_close(stage1, tiny_vae.decode(hint), rtol=0, atol=0)  # the SDXL VAE's own decode
    assert stage1.shape == (1, 64, 48, 3)
    assert relative_error(hint, tiny_vae.encode(image)) > 1e-2  # not the plain SDXL encoder


def _encoder_kwargs(vae):
    from tiny_models import TINY_VAE_CONFIG
    return dict(TINY_VAE_CONFIG["params"]["ddconfig"])


def test_lq_vae_works_with_stock_vae_nodes_and_leaves_the_sdxl_vae_alone(tiny_supir, tiny_vae):
    image = lq_image(seed=1)
    plain_latent = tiny_vae.encode(image)
    plain_decode = tiny_vae.decode(plain_latent)
    vae = lq_vae(tiny_supir, tiny_vae)
    hint, _ = encode_lq(tiny_supir, tiny_vae, image)
    # the same encoder on the same image
    torch.testing.assert_close(comfy_nodes.VAEEncode().encode(vae, image)[0]["samples"], hint, rtol=0, atol=0)
    with torch.inference_mode():  # as ComfyUI runs every node
        tiled = comfy_nodes.VAEEncodeTiled().encode(vae, image, 512, 64, 64, 8)[0]["samples"]
    assert_close_relative(tiled, hint, 1e-6)  # one tile: the same encoder, its output blended by weight 1
    assert vae.first_stage_model is tiny_vae.first_stage_model  # a patched clone: no second copy of the weights
    assert torch.equal(tiny_vae.encode(image), plain_latent)  # the SDXL VAE still encodes with its own encoder
    assert torch.equal(vae.decode(plain_latent), plain_decode)  # and both decode with the SDXL decoder


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_grey_rgb_and_rgba_images(tiny_supir, tiny_vae, channels):
    image = lq_image(c=channels, seed=2)
    hint, stage1 = encode_lq(tiny_supir, tiny_vae, image)
    reference, _ = encode_lq(tiny_supir, tiny_vae, as_rgb(image))
    torch.testing.assert_close(hint, reference, rtol=0, atol=0)  # the same RGB image encoded
    assert stage1.shape[-1] == 3


def test_odd_sizes_are_snapped_to_multiples_of_8(tiny_supir, tiny_vae):
    hint, stage1 = encode_lq(tiny_supir, tiny_vae, lq_image(h=61, w=30))
    assert hint.shape[-2:] == (8, 4) and stage1.shape[1:3] == (64, 32)


def test_bad_channel_counts_and_mismatched_vae(tiny_supir, tiny_vae):
    with pytest.raises(ValueError, match="2 channels; SUPIR takes grey"):
        encode_lq(tiny_supir, tiny_vae, lq_image(c=2))
    from tiny_models import tiny_vae as build_vae
    other = build_vae(config={"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 64,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}})
    with pytest.raises(WeightsFileError, match="SUPIR needs the SDXL VAE.*wrong shape"):
        encode_lq(tiny_supir, other, lq_image())


def test_tiled_lq_encode(tiny_supir, tiny_vae):
    image = lq_image(h=64, w=48, seed=4)
    with torch.inference_mode():  # ComfyUI's tiled VAE runs inside inference mode, as every node does
        whole = encode_lq(tiny_supir, tiny_vae, image)
        one_tile = encode_lq(tiny_supir, tiny_vae, image, tile_size=512)
        big = lq_image(h=200, w=136, seed=5)
        hint, stage1 = encode_lq(tiny_supir, tiny_vae, big, tile_size=64)
    # a tile covering the image is the plain encode, blended by weight 1 in ComfyUI's tiled pass: float32 rounding
    assert_close_relative(one_tile[0], whole[0], 1e-5)
    assert_close_relative(one_tile[1], whole[1], 1e-4)  # its decode amplifies that rounding
    assert hint.shape == (1, 4, 25, 17) and stage1.shape == (1, 200, 136, 3) and torch.isfinite(hint).all()


@pytest.mark.parametrize("tile_size", [1, 2, 8, 32, 63])
def test_a_tile_below_64_px_is_refused_before_the_vae_runs(tiny_supir, tile_size):
    """Over the API a tile_size of 1 raised a ZeroDivisionError, 2 a kernel-size error, and 8 to 32 px ran for
    minutes; the schema's step does not bind API prompts, nor its min a linked INT."""
    from supir_restore.nodes.supir_nodes import SUPIRLQEncode
    with pytest.raises(ValueError, match=rf"^tile_size \({tile_size} px\) must be 0 \(the whole image at once\) or "
                                         "at least 64 px"):
        SUPIRLQEncode.execute(tiny_supir, None, lq_image(), tile_size)  # no VAE: it must not be reached


def test_non_finite_images_and_hints_are_errors_naming_the_input(tiny_supir, tiny_vae, tiny_model):
    from supir_restore.nodes.supir_nodes import ApplySUPIR, SUPIRLQEncode
    image = lq_image()
    image[0, 5, 5, 0] = float("inf")
    with pytest.raises(ValueError, match="^image contains 1 NaN or infinite value"):
        SUPIRLQEncode.execute(tiny_supir, tiny_vae, image, 0)
    hint = torch.zeros(1, 4, 8, 6)
    hint[..., 0] = float("nan")
    with pytest.raises(ValueError, match="^hint contains 32 NaN or infinite values"):
        ApplySUPIR.execute(tiny_model, tiny_supir, {"samples": hint}, 1.0, 1.0)
