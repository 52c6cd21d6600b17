"""StableSR's CFW decode on ComfyUI's VAE: the LR image's encoder features fused into the decoder.

The official ``AutoencoderKLResi`` runs the SD VAE's encoder on the upscaled LR image, keeping the outputs of
encoder levels 1 and 2 (after their ResBlocks, before the downsample), then decodes the latent through
``post_quant_conv`` and ``Decoder_Mix``: the stock decoder with ``h = fusion_layer_i(feature_i, h, w)`` after the
ResBlocks of decoder levels 2 and 1, before their upsample. Here the same order walks the modules of ComfyUI's own
VAE (its ``Encoder``/``Decoder`` keep the official module names), with the fusion layers as a network of the
pack's under ComfyUI's model management. The SD-VAE weights are the CFW file's (``set`` weight patches on a clone
of the VAE's patcher, as SUPIR's LQ VAE) or the VAE's as loaded.

Tiled, two ways (``tiled_vae``). ``blend``: overlapping latent tiles (a quarter of the tile overlaps), each decoded
with the features of the LR image's matching crop, as the official tiled script runs its whole pipeline per tile,
blended with the pack's Gaussian weights; each tile is normalised on its own, so tiles differ from the whole-image
decode near their borders; memory is bounded by the tile. ``exact``: the exact tiled VAE (``tiling/exact_vae.py``)
runs the whole CFW decode (encoder features, decoder, fusion layers) tile by tile, every GroupNorm normalising by
its input's whole-image statistics and the middle attention attending to the whole image, so tiles equal the
whole-image decode up to float rounding; memory is bounded by a tile window (the tile plus the convolutions'
reach on each side), time is many times the blend's. Both take the latent and the LR image as one tensor at
latent resolution (the image pixel-unshuffled), so each tile carries its own LR crop.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import comfy.model_management as mm
import comfy.ops
import comfy.utils
from comfy.ldm.models.autoencoder import AutoencoderKL
from comfy.ldm.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder

from ..image.io import as_rgb
from ..stablesr.cfw import CFWLayers, cfw_layout, check_cfw_finite, check_fusion_fits, split_cfw_state_dict, vae_config
from ..tiling.exact_vae import tiled_exact
from ..tiling.grid import blend_tiles, check_vae_tile, tile_grid
from ..weights import STORAGE_DTYPES, check_layout, read_state_dict
from .auto_tiles import vae_tile
from .supir_loader import managed_network
from .tiled_vae import progress_bar

VAE_WEIGHTS = ("cfw_file", "vae")
TILED_VAES = ("blend", "exact")


class CFWMismatchError(ValueError):
    """The CFW file, the VAE, the latent and the LR image do not fit together."""


@dataclass
class CFWModel:
    """A loaded CFW file: the fusion layers managed by ComfyUI, and the file's SD-VAE tensors (ComfyUI's VAE
    names; empty when the file holds only the fusion layers)."""
    patcher: object
    vae_weights: dict[str, torch.Tensor]
    compute_dtype: torch.dtype
    name: str

    @property
    def layers(self) -> CFWLayers:
        return self.patcher.model


def load_cfw(path: str) -> CFWModel:
    """Load and validate a CFW file (``vqgan_cfw_00011.ckpt``): fusion layers sized from their shapes and checked
    tensor by tensor, the SD-VAE part against ComfyUI's VAE built on the meta device. The fusion layers are
    stored in ComfyUI's VAE precision for the device (``--fp32-vae``/``--bf16-vae`` apply)."""
    name = os.path.basename(path)
    vae, fusion = split_cfw_state_dict(read_state_dict(path), name)
    check_cfw_finite(vae, fusion, name)
    check_cfw_layout(vae, fusion, name)
    shapes = {k: tuple(v.shape) for k, v in fusion.items()}
    dtype = mm.vae_dtype(mm.get_torch_device(), [torch.bfloat16, torch.float32])
    patcher, compute_dtype = managed_network(lambda **kw: CFWLayers.from_shapes(shapes, **kw), fusion,
                                             {v: k for k, v in STORAGE_DTYPES.items()}[dtype])
    return CFWModel(patcher, vae, compute_dtype, name)


def check_cfw_layout(vae: dict[str, torch.Tensor], fusion: dict[str, torch.Tensor], name: str) -> CFWLayers:
    """A CFW file's tensors checked as :func:`cfw_layout` does, and its SD-VAE tensors (if any) tensor by tensor
    against ComfyUI's VAE of the sizes they give."""
    layers = cfw_layout(vae, fusion, name)
    if vae:
        config, embed_dim = vae_config(vae, name)
        with torch.device("meta"):
            reference = AutoencoderKL(ddconfig=config, embed_dim=embed_dim)
        check_layout({k: v.shape for k, v in reference.state_dict().items()}, {k: v.shape for k, v in vae.items()},
                     "SD VAE (ComfyUI's VAE of the sizes these tensors give)", name)
    return layers


def _sd_autoencoder(vae, cfw: CFWModel):
    """The VAE's first-stage model, checked to be an SD-layout autoencoder whose levels fit the fusion layers."""
    vae.throw_exception_if_invalid()
    model = vae.first_stage_model
    encoder, decoder = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if not (isinstance(encoder, Encoder) and isinstance(decoder, Decoder) and hasattr(model, "post_quant_conv")) \
            or any(isinstance(m, nn.Conv3d) for m in model.modules()):
        raise CFWMismatchError(f"{cfw.name} works with the SD 2.1 VAE (an image VAE with ComfyUI's Encoder and "
                               f"Decoder); connect the VAE of your SD 2.1 checkpoint.")
    check_fusion_fits(cfw.layers, {i: down.block[-1].out_channels for i, down in enumerate(encoder.down)},
                      "this VAE's encoder", cfw.name)
    check_fusion_fits(cfw.layers, {i: up.block[-1].out_channels for i, up in enumerate(decoder.up)},
                      "this VAE's decoder", cfw.name)
    return model


def cfw_vae(cfw: CFWModel, vae, vae_weights: str = "cfw_file"):
    """The VAE the decode runs: ``vae`` itself (``vae``), or (``cfw_file``) a copy whose patcher is a clone of
    ``vae``'s with the CFW file's SD-VAE tensors set in as weight patches; nothing is copied, and the input VAE
    is unchanged."""
    if vae_weights not in VAE_WEIGHTS:
        raise ValueError(f"vae_weights '{vae_weights}' is not one of {', '.join(VAE_WEIGHTS)}")
    model = _sd_autoencoder(vae, cfw)
    if vae_weights == "vae":
        return vae
    if not cfw.vae_weights:
        raise CFWMismatchError(f"{cfw.name} holds only the fusion layers, no VAE weights; set vae_weights to vae "
                               f"(your SD 2.1 VAE).")
    check_layout({k: v.shape for k, v in model.state_dict().items()},
                 {k: v.shape for k, v in cfw.vae_weights.items()},
                 "VAE (compared with the connected VAE; CFW needs the SD 2.1 VAE layout)", cfw.name)
    out = copy.copy(vae)
    out.patcher = vae.patcher.clone()
    out.patcher.add_patches({k: ("set", (v,)) for k, v in cfw.vae_weights.items()})
    return out


def encoder_features(encoder: nn.Module, x: torch.Tensor, levels: list[int]) -> dict[int, torch.Tensor]:
    """The official ``Encoder.forward(return_fea=True)`` features: each of ``levels``' output after its ResBlocks
    (and attention), before its downsample. x: [B,3,H,W] in [-1,1] -> {level: [B, C_level, H/2^level,
    W/2^level]}; the walk stops at the deepest level asked for."""
    h, features = encoder.conv_in(x), {}
    for level in range(max(levels) + 1):
        down = encoder.down[level]
        for i, block in enumerate(down.block):
            h = block(h, None)
            if len(down.attn) > 0:
                h = down.attn[i](h)
        if level in levels:
            features[level] = h
        if level < max(levels):
            h = down.downsample(h)
    return features


def decode_mix(model: nn.Module, layers: CFWLayers, z: torch.Tensor, features: dict[int, torch.Tensor], w: float,
               dtype: torch.dtype) -> torch.Tensor:
    """``post_quant_conv`` and the official ``Decoder_Mix`` on ComfyUI's decoder modules: z [B,4,h,w] (an
    unscaled LATENT) -> [B,3,8h,8w] in [-1,1]; the fusion layers run in ``dtype``."""
    decoder = model.decoder
    h = decoder.conv_in(model.post_quant_conv(z))
    h = decoder.mid.block_2(decoder.mid.attn_1(decoder.mid.block_1(h, None)), None)
    for level in reversed(range(decoder.num_resolutions)):
        up = decoder.up[level]
        for i, block in enumerate(up.block):
            h = block(h, None)
            if len(up.attn) > 0:
                h = up.attn[i](h)
        if level in layers.levels:
            h = layers.layer(level)(features[level].to(dtype), h.to(dtype), w).to(h.dtype)
        if level != 0:
            h = up.upsample(h)
    h = decoder.conv_out(F.silu(decoder.norm_out(h)))
    return torch.tanh(h) if decoder.tanh_out else h


def check_sizes(samples: torch.Tensor, pixels: torch.Tensor, ratio: int = 8,
                given: tuple[int, int] | None = None) -> None:
    """The LR image (cropped to multiples of ``ratio`` as VAE Encode does, from ``given`` (height, width) when that
    differs) is the latent's size times the VAE's ``ratio`` (8 for SD's), and its batch is the latent's or 1."""
    latent_size, image_size = tuple(ratio * n for n in samples.shape[-2:]), tuple(pixels.shape[1:3])
    if image_size != latent_size:
        given = tuple(given or image_size)
        cropped = (f" ({image_size[1]}x{image_size[0]} px once cropped to multiples of {ratio}, as VAE Encode crops)"
                   if given != image_size else "")
        raise CFWMismatchError(
            f"lr_image is {given[1]}x{given[0]} px{cropped} but the latent decodes to {latent_size[1]}x"
            f"{latent_size[0]} px; connect the upscaled LR image whose encode StableSR sampled from (the latent's "
            f"size times {ratio}).")
    if pixels.shape[0] not in (1, samples.shape[0]):
        raise CFWMismatchError(f"lr_image has {pixels.shape[0]} images but the latent {samples.shape[0]}; give one "
                               f"LR image, or one per latent.")


def cfw_decode(cfw: CFWModel, vae, samples: torch.Tensor, lr_image: torch.Tensor, w: float = 0.5,
               vae_weights: str = "cfw_file", tile_size: int | None = 0, tiled_vae: str = "blend") -> torch.Tensor:
    """Decode ``samples`` (raw LATENT samples [B,4,h,w]) with CFW toward ``lr_image`` (IMAGE [B or 1,8h,8w,C] in
    [0,1], the upscaled LR image StableSR restored; 8 is the SD VAE's scale) at fidelity weight ``w`` (0: the
    plain VAE decode). ``tile_size`` (pixels): 0 decodes the whole image at once; from 64 up, tiles of that size,
    ``tiled_vae`` ``blend`` (overlapping tiles, each normalised on its own) or ``exact`` (whole-image statistics:
    the untiled result); None: the largest tile that fits the free memory (``auto_tiles.vae_tile``). Returns IMAGE
    [B,8h,8w,3] in [0,1]."""
    if tile_size is not None:
        check_vae_tile(tile_size)
    if tiled_vae not in TILED_VAES:
        raise ValueError(f"tiled_vae '{tiled_vae}' is not one of {', '.join(TILED_VAES)}")
    vae = cfw_vae(cfw, vae, vae_weights)
    pixels = vae.vae_encode_crop_pixels(as_rgb(lr_image))
    ratio = vae.upscale_ratio
    check_sizes(samples, pixels, ratio, tuple(lr_image.shape[1:3]))
    model, layers = vae.first_stage_model, cfw.layers
    channels, (height, width) = samples.shape[1], samples.shape[-2:]
    if tile_size is None:
        tile_size = vae_tile(vae, height, width, encode=True, decode=True, patchers=[cfw.patcher])
    tile = tile_size // ratio if tile_size else max(height, width)
    span = 3 * tile if tiled_vae == "exact" else tile  # an exact tile's window has a halo: 3 tiles, as decode_exact
    window = min(span, height), min(span, width)
    memory = vae.memory_used_decode((1, channels, *window), vae.vae_dtype) + vae.memory_used_encode(
        (1, 3, ratio * window[0], ratio * window[1]), vae.vae_dtype)
    mm.load_models_gpu([vae.patcher, cfw.patcher], memory_required=memory, force_full_load=vae.disable_offload)

    def decode(packed: torch.Tensor) -> torch.Tensor:
        """A tile of the latent and its LR crop, packed as [1, c + 3·ratio², h, w] (the crop in [-1,1],
        pixel-unshuffled) -> IMAGE tile [1,3,ratio·h,ratio·w]."""
        mm.throw_exception_if_processing_interrupted()
        # contiguous: a channel slice (or strided crop) makes every convolution re-lay its weight out
        z = packed[:, :channels].contiguous()
        crop = F.pixel_shuffle(packed[:, channels:], ratio).contiguous()
        features = encoder_features(model.encoder, crop.to(vae.device, vae.vae_dtype), layers.levels)
        out = decode_mix(model, layers, z.to(vae.device, vae.vae_dtype), features, w, cfw.compute_dtype)
        return vae.process_output(out.to(vae.output_device).float())

    tiles = tile_grid(height, width, tile, tile - tile // 4)
    bar = comfy.utils.ProgressBar(samples.shape[0] * len(tiles))

    def blended_tile(packed: torch.Tensor, group: list) -> torch.Tensor:
        out = decode(packed)
        bar.update(1)
        return out

    network = nn.ModuleList([model, layers])  # every GroupNorm, attention and convolution the decode runs
    probe = torch.zeros(1, channels + 3 * ratio ** 2, 4, 4)
    out = []
    with torch.inference_mode():
        for i in range(samples.shape[0]):
            x = vae.process_input(pixels[min(i, pixels.shape[0] - 1)][None].movedim(-1, 1)).float()
            packed = torch.cat([samples[i:i + 1].float(), F.pixel_unshuffle(x, ratio)], dim=1)
            if tiled_vae == "exact":
                out.append(tiled_exact(decode, network, packed, tile, 1, probe, (AttnBlock,),
                                       comfy.ops.scaled_dot_product_attention, progress_bar()))
            else:
                out.append(blend_tiles(blended_tile, packed, tiles, weights="symmetric", scale=ratio))
    return torch.cat(out).movedim(1, -1)
