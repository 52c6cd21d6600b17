"""Tier 2: StableSR's CFW decode on ComfyUI's VAE (tiny VAE, seeded fusion layers in the official file layout):
it equals a walk of the same modules in the official Encoder(return_fea) / Decoder_Mix order, w = 0 is the stock
VAE decode, blended tiles decode their own crops and exact tiles equal the whole image, wrong files and inputs
fail clearly, and the full-size official file's layout fits ComfyUI's SD VAE and the fusion layers."""
import json
import logging
import os
import types

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
from helpers import assert_close_relative, relative_error  # noqa: E402
from host_helpers import assert_registered_with_descriptions_and_tooltips, run_node, smooth_photo  # noqa: E402
from stablesr_helpers import cfw_state_dict  # noqa: E402
from tiny_models import TINY_VAE_CONFIG  # noqa: E402
from tiny_models import tiny_vae as build_tiny_vae  # noqa: E402

from supir_restore.nodes.cfw_nodes import NODES, StableSRCFWDecode, StableSRLoadCFW  # noqa: E402
from supir_restore.supir.host.cfw_decode import (CFWMismatchError, CFWModel, cfw_decode, cfw_vae,  # noqa: E402
                                                 check_cfw_layout, load_cfw)
from supir_restore.supir.stablesr.cfw import split_cfw_state_dict  # noqa: E402
from supir_restore.supir.stablesr.checkpoint import StableSRCheckpointError  # noqa: E402
from supir_restore.supir.weights import CorruptWeightsError, UnsafeWeightsError, WeightsFileError  # noqa: E402

LAYOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "stablesr-layout.json")


def save(path, sd) -> str:
    torch.save({"state_dict": sd, "global_step": 11}, path)
    return str(path)


@pytest.fixture(scope="module")
def cfw_file(tmp_path_factory, tiny_vae):
    return save(tmp_path_factory.mktemp("cfw") / "vqgan_cfw_tiny.ckpt", cfw_state_dict(tiny_vae))


@pytest.fixture(scope="module")
def cfw(cfw_file):
    return load_cfw(cfw_file)


def file_vae(cfw_file):
    """A VAE like the tiny one holding the CFW file's VAE weights."""
    vae = build_tiny_vae()
    vae.first_stage_model.load_state_dict(split_cfw_state_dict(torch.load(cfw_file)["state_dict"])[0])
    return vae


def latent_and_lr(size=(12, 20), seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    lr = smooth_photo(8 * size[0], 8 * size[1], seed)
    return torch.randn(batch, 4, *size, generator=g), lr


def official_cfw(model, layers, z, lr, w):
    """AutoencoderKLResi's forward in the official order on ComfyUI's modules: encode the LR image keeping the
    features at the end of encoder levels 1 and 2 (Encoder.forward(return_fea=True), MD:534-567), then
    post_quant_conv and Decoder_Mix (MD:762-795) with Fuse_sft_block_RRDB (MD:822-835) after the ResBlocks of
    decoder levels 2 and 1; the output as ComfyUI's VAE decode gives it."""
    enc = model.encoder
    hs, fea_list = [enc.conv_in(lr.movedim(-1, 1) * 2 - 1)], []
    for i_level in range(enc.num_resolutions):
        for i_block in range(enc.num_res_blocks):
            h = enc.down[i_level].block[i_block](hs[-1], None)
            if len(enc.down[i_level].attn) > 0:
                h = enc.down[i_level].attn[i_block](h)
            hs.append(h)
        if i_level == 1 or i_level == 2:
            fea_list.append(h)
        if i_level != enc.num_resolutions - 1:
            hs.append(enc.down[i_level].downsample(hs[-1]))
    dec = model.decoder
    h = dec.conv_in(model.post_quant_conv(z))
    h = dec.mid.block_2(dec.mid.attn_1(dec.mid.block_1(h, None)), None)
    for i_level in reversed(range(dec.num_resolutions)):
        for i_block in range(dec.num_res_blocks + 1):
            h = dec.up[i_level].block[i_block](h, None)
            if len(dec.up[i_level].attn) > 0:
                h = dec.up[i_level].attn[i_block](h)
        if i_level != dec.num_resolutions - 1 and i_level != 0:
            fuse = layers.layer(i_level)
            enc_feat = fuse.encode_enc_3(fuse.encode_enc_2(fuse.encode_enc_1(torch.cat([fea_list[i_level - 1], h], 1))))
            h = h + w * enc_feat
        if i_level != 0:
            h = dec.up[i_level].upsample(h)
    h = dec.norm_out(h)
    h = dec.conv_out(h * torch.sigmoid(h))
    return ((h + 1) / 2).clamp(0, 1).movedim(1, -1)


def test_cfw_decode_equals_the_official_walk(cfw, cfw_file, tiny_vae):
    z, lr = latent_and_lr()
    file_model = file_vae(cfw_file).first_stage_model
    with torch.no_grad():
        stock = tiny_vae.decode(z)
        for w in (0.5, 1.0):  # the same float32 decoder and fusion, through ComfyUI's VAE and ops
            assert_close_relative(cfw_decode(cfw, tiny_vae, z, lr, w, "vae"),
                                  official_cfw(tiny_vae.first_stage_model, cfw.layers, z, lr, w), 1e-5)
            assert_close_relative(cfw_decode(cfw, tiny_vae, z, lr, w, "cfw_file"),
                                  official_cfw(file_model, cfw.layers, z, lr, w), 1e-5)
        fused = cfw_decode(cfw, tiny_vae, z, lr, 0.5, "vae")
        torch.testing.assert_close(tiny_vae.decode(z), stock, rtol=0, atol=0)  # the connected VAE is unchanged
    assert (fused - stock).abs().mean() > 0.05  # the fusion changes the image (of values in [0, 1])


def test_weight_zero_is_the_stock_vae_decode(cfw, cfw_file, tiny_vae):
    z, lr = latent_and_lr(size=(10, 7), seed=1, batch=2)
    with torch.no_grad():
        stock, stock_file = tiny_vae.decode(z), file_vae(cfw_file).decode(z)
        # float32 rounding only (the stock decode runs the batch at once, the CFW decode image by image)
        assert_close_relative(cfw_decode(cfw, tiny_vae, z, lr, 0.0, "vae"), stock, 1e-4)
        assert_close_relative(cfw_decode(cfw, tiny_vae, z, torch.cat([lr, lr.flip(1)]), 0.0, "cfw_file"),
                              stock_file, 1e-4)
    assert relative_error(stock_file, stock) > 1e-2  # the file's VAE weights were used


def test_one_tile_is_the_untiled_decode_and_every_tile_decodes_its_own_crop(cfw, tiny_vae):
    z, lr = latent_and_lr(seed=2)  # 12 x 20 latent
    whole = cfw_decode(cfw, tiny_vae, z, lr, 0.5)
    # one tile: the whole decode, blended with weight 1 (float32 rounding of the blend only)
    assert_close_relative(cfw_decode(cfw, tiny_vae, z, lr, 0.5, tile_size=160), whole, 1e-6)
    tiled = cfw_decode(cfw, tiny_vae, z, lr, 0.5, tile_size=64)  # tiles of 8 latent px at rows 0, 4, columns 0, 6, 12
    top_left = cfw_decode(cfw, tiny_vae, z[:, :, :8, :8], lr[:, :64, :64], 0.5)
    bottom_right = cfw_decode(cfw, tiny_vae, z[:, :, 4:, 12:], lr[:, 32:, 96:], 0.5)
    # where a single tile covers the image, the blend is that tile's decode of its latent and LR crops
    assert_close_relative(tiled[:, :32, :48], top_left[:, :32, :48], 1e-6)
    assert_close_relative(tiled[:, 64:, 112:], bottom_right[:, 32:, 16:], 1e-6)
    assert (tiled - whole).abs().mean() > 1e-3  # each tile is normalised on its own (values in [0, 1])


def test_tiled_decode_approaches_the_untiled_as_tiles_grow(cfw, tiny_vae):
    """Tile borders (zero padding, per-tile GroupNorm statistics) are what tiling changes; the tiny decoder reaches
    across a 64 px tile, so small tiles are far off here, and the difference falls as tiles grow."""
    z, lr = latent_and_lr(size=(16, 32), seed=3)
    whole = cfw_decode(cfw, tiny_vae, z, lr, 0.5)
    errors = [float((cfw_decode(cfw, tiny_vae, z, lr, 0.5, tile_size=tile) - whole).norm() / whole.norm())
              for tile in (64, 128)]
    assert errors[1] < 0.8 * errors[0], errors


def largest_convolution_input(cfw, vae, z, lr, **kw) -> tuple[int, int]:
    """The largest (height, width) any convolution of the VAE or the fusion layers sees in one CFW decode."""
    shapes = []
    convs = [m for net in (vae.first_stage_model, cfw.layers) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[-2:]))) for m in convs]
    try:
        cfw_decode(cfw, vae, z, lr, 0.5, **kw)
    finally:
        for h in hooks:
            h.remove()
    return max(shapes, key=lambda s: s[0] * s[1])


def test_tiled_memory_is_bounded_by_the_tile(cfw, tiny_vae):
    """The largest input any convolution (encoder, decoder, fusion layers) sees is a tile, however wide the image;
    the whole-image decode's grows with it."""
    largest = {}
    for width in (16, 32):
        z, lr = latent_and_lr(size=(8, width), seed=4)
        for tile in (0, 64):
            largest[width, tile] = largest_convolution_input(cfw, tiny_vae, z, lr, tile_size=tile)
    # 64 px tiles (+ 1 for the encoder downsampling's padding)
    assert largest[16, 64] == largest[32, 64] == (65, 65)
    assert largest[16, 0] == (65, 129) and largest[32, 0] == (65, 257)


@pytest.mark.parametrize("tile_size", [64, 128])
def test_exact_tiles_equal_the_whole_image_decode(cfw, tiny_vae, tile_size):
    z, lr = latent_and_lr(size=(12, 20), seed=2)  # 64 px: cores of 8 latent px at rows 0, 8, columns 0, 8, 16
    whole = cfw_decode(cfw, tiny_vae, z, lr, 0.5)
    exact = cfw_decode(cfw, tiny_vae, z, lr, 0.5, tile_size=tile_size, tiled_vae="exact")
    blend = cfw_decode(cfw, tiny_vae, z, lr, 0.5, tile_size=tile_size)
    # whole-image GroupNorm statistics and attention in every tile: only float32 rounding is left (measured
    # 1e-6 at most), where the blended tiles, each normalised on its own, are off by whole percents
    assert_close_relative(exact, whole, 1e-5)
    assert relative_error(blend, whole) > 1e-2


def test_exact_tiles_memory_is_bounded_by_the_tile_window(cfw, tiny_vae):
    """The largest input any convolution (encoder, decoder, fusion layers) of the exact tiled decode sees is a
    tile window, the tile and the convolutions' reach on each side (42 latent px here), however wide the image."""
    largest = {width: largest_convolution_input(cfw, tiny_vae, *latent_and_lr(size=(1, width), seed=4), tile_size=64,
                                                tiled_vae="exact") for width in (104, 120)}
    # 8 latent px of tile + 2 x 42 of halo, in image pixels (+ 1 for the encoder downsampling's padding)
    assert largest[104] == largest[120] == (9, 8 * (8 + 2 * 42) + 1)


def pickle_with_code(path) -> str:
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo never run",))
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"decoder.fusion_layer_1.x": Exploit()}}, f)
    return str(path)


def truncated_zip(path) -> str:
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    return str(path)


@pytest.mark.parametrize("kind,error,match", [
    ("stablesr", StableSRCheckpointError, "StableSR's diffusion checkpoint .* not the CFW file"),
    ("supir", StableSRCheckpointError, "this is a SUPIR file"),
    ("plain_vae", StableSRCheckpointError, "plain VAE without CFW's fusion layers"),
    ("corrupt", CorruptWeightsError, "corrupt or truncated"),
    ("code", UnsafeWeightsError, "refused to load"),
    ("nan", StableSRCheckpointError, "NaN or infinite .*decoder.fusion_layer_2.encode_enc_3.conv2.weight"),
    ("missing", WeightsFileError, "CFW fusion layers: missing 1: fusion_layer_1.encode_enc_2.1.rdb3.conv5.bias"),
    ("vae_shape", WeightsFileError, r"SD VAE .*wrong shape 1: decoder.norm_out.weight \[31\]"),
])
def test_wrong_files_fail_clearly(tmp_path, tiny_vae, tiny_supir_file, kind, error, match):
    sd, path = cfw_state_dict(tiny_vae), None
    if kind == "stablesr":
        sd = {"structcond_stage_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
              "model.diffusion_model.input_blocks.1.0.spade.mlp_beta.weight": torch.zeros(32, 32, 3, 3),
              **{f"first_stage_model.{k}": v for k, v in tiny_vae.first_stage_model.state_dict().items()}}
    elif kind == "plain_vae":
        sd = tiny_vae.first_stage_model.state_dict()
    elif kind == "nan":
        sd["decoder.fusion_layer_2.encode_enc_3.conv2.weight"][0, 0, 0, 0] = float("nan")
    elif kind == "missing":
        del sd["decoder.fusion_layer_1.encode_enc_2.1.rdb3.conv5.bias"]
    elif kind == "vae_shape":
        sd["decoder.norm_out.weight"] = torch.ones(31)
    elif kind == "supir":
        path = tiny_supir_file
    elif kind == "code":
        path = pickle_with_code(tmp_path / "bad.ckpt")
    elif kind == "corrupt":
        path = truncated_zip(tmp_path / "cut.ckpt")
    with pytest.raises(error, match=match):
        load_cfw(path or save(tmp_path / "cfw.ckpt", sd))


def test_mismatched_vae_and_inputs_fail_clearly(cfw, tiny_vae, tmp_path):
    z, lr = latent_and_lr(size=(8, 8))
    wide = build_tiny_vae(config={"params": {**TINY_VAE_CONFIG["params"], "ddconfig": {
        **TINY_VAE_CONFIG["params"]["ddconfig"], "ch_mult": [1, 2, 2, 2]}}})
    with pytest.raises(StableSRCheckpointError, match="fusion_layer_1 is 32 channels wide but this VAE's encoder "
                                                      "has 64 channels at level 1; .*SD 2.1 VAE layout"):
        cfw_decode(cfw, wide, z, lr)
    with pytest.raises(CFWMismatchError, match="lr_image is 72x64 px but the latent decodes to 64x64 px"):
        cfw_decode(cfw, tiny_vae, z, smooth_photo(64, 72, 0))
    cfw_decode(cfw, tiny_vae, z, smooth_photo(66, 71, 0), 0.5)  # cropped to 64 x 64 as VAE Encode crops
    with pytest.raises(CFWMismatchError, match="^lr_image is 1x1 px \\(0x0 px once cropped to multiples of 8, as VAE "
                                               "Encode crops\\) but the latent decodes to 64x64 px"):
        cfw_decode(cfw, tiny_vae, z, smooth_photo(1, 1, 0))
    with pytest.raises(CFWMismatchError, match="^lr_image is 79x70 px \\(72x64 px once cropped"):
        cfw_decode(cfw, tiny_vae, z, smooth_photo(70, 79, 0))
    with pytest.raises(CFWMismatchError, match="lr_image has 2 images but the latent 3"):
        cfw_decode(cfw, tiny_vae, z.repeat(3, 1, 1, 1), lr.repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="tile_size \\(32 px\\) must be 0 \\(the whole image at once\\) or at least 64 px"):
        cfw_decode(cfw, tiny_vae, z, lr, tile_size=32)
    with pytest.raises(ValueError, match="tiled_vae 'fast' is not one of blend, exact"):
        cfw_decode(cfw, tiny_vae, z, lr, tile_size=64, tiled_vae="fast")
    with pytest.raises(ValueError, match="vae_weights 'sdxl' is not one of cfw_file, vae"):
        cfw_decode(cfw, tiny_vae, z, lr, vae_weights="sdxl")
    fusion_only = load_cfw(save(tmp_path / "fusion_only.ckpt", cfw_state_dict(tiny_vae, vae_part=False)))
    cfw_decode(fusion_only, tiny_vae, z, lr, vae_weights="vae")
    with pytest.raises(CFWMismatchError, match="holds only the fusion layers.*set vae_weights to vae"):
        cfw_decode(fusion_only, tiny_vae, z, lr, vae_weights="cfw_file")


def test_nodes_load_and_decode(cfw_file, tiny_vae, monkeypatch):
    folder = os.path.dirname(cfw_file)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "stablesr",
                        ([folder], folder_paths.supported_pt_extensions))
    assert_registered_with_descriptions_and_tooltips(NODES, "supir/stablesr")
    name = os.path.basename(cfw_file)
    assert name in StableSRLoadCFW.GET_NODE_INFO_V1()["input"]["required"]["cfw_name"][1]["options"]
    (cfw,) = run_node(StableSRLoadCFW, cfw_name=name).result
    z, lr = latent_and_lr(size=(8, 12), seed=5)
    (image,) = run_node(StableSRCFWDecode, samples={"samples": z}, vae=tiny_vae, cfw=cfw, lr_image=lr, w=0.5,
                        vae_weights="cfw_file", tile_size=0).result
    # the node makes this very call
    torch.testing.assert_close(image, cfw_decode(cfw, tiny_vae, z, lr, 0.5, "cfw_file"), rtol=0, atol=0)
    lr[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="lr_image contains 1 NaN"):
        run_node(StableSRCFWDecode, samples={"samples": z}, vae=tiny_vae, cfw=cfw, lr_image=lr, w=0.5,
                 vae_weights="cfw_file", tile_size=0)


def test_official_cfw_file_fits_comfyui_sd_vae_and_the_fusion_layers():
    """vqgan_cfw_00011.ckpt's 404 tensors (names and shapes, on the meta device) with a training-loss tensor: the
    248 VAE tensors are exactly those of the VAE ComfyUI builds for them (its SD VAE), and the 156 fusion tensors
    those of the fusion layers sized from their shapes; nothing is missing."""
    with open(LAYOUT) as f:
        data = json.load(f)
    sd = {k: torch.empty(v, device="meta") for k, v in data["vqgan_cfw_ckpt"].items()}
    sd["loss.discriminator.main.0.weight"] = torch.empty(64, 3, 4, 4, device="meta")
    vae, fusion = split_cfw_state_dict(sd, "vqgan_cfw_00011.ckpt")
    assert len(vae) == 248 and len(fusion) == 156
    layers = check_cfw_layout(vae, fusion, "vqgan_cfw_00011.ckpt")  # raises on anything missing or mis-shaped
    sd_vae = sd_vae_as_comfyui_builds_it(vae)
    assert {k: tuple(v.shape) for k, v in sd_vae.first_stage_model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in vae.items()}
    on_meta = CFWModel(types.SimpleNamespace(model=layers), vae, torch.float32, "vqgan_cfw_00011.ckpt")
    patched = cfw_vae(on_meta, sd_vae, "cfw_file")  # the decode-time checks of the connected VAE pass
    assert len(patched.patcher.patches) == 248 and cfw_vae(on_meta, sd_vae, "vae") is sd_vae


def sd_vae_as_comfyui_builds_it(vae: dict):
    """The VAE ComfyUI builds for the file's VAE tensors (its own choice of configuration), weights uninitialised."""
    logging.disable(logging.WARNING)
    try:
        return comfy.sd.VAE(sd={k: torch.empty(v.shape) for k, v in vae.items()}, dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
