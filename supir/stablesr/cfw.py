"""StableSR's controllable feature wrapping (CFW): the fusion layers its VAE decoder (``Decoder_Mix``) runs after
the ResBlocks of decoder levels 1 and 2, mixing in the LR image's encoder features of the same level:
``out = dec + w * fuse(cat(enc, dec))`` with ``fuse`` = ResBlock(2C -> C), RRDBs, ResBlock(C -> C), and ``w``
the user's fidelity weight (0: the plain decoder; the official default 0.5). Plain torch, sized from the
file's shapes; the names follow ``vqgan_cfw_00011.ckpt`` (``decoder.fusion_layer_{1,2}.*``). The file's other
tensors are an SD VAE under the names ComfyUI's VAE uses too; its hyper-parameters are derived from their shapes
here, and ``host/cfw_decode.py`` checks them against ComfyUI's VAE and runs the decode."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import non_finite_tensors
from ..weights import check_layout, count_indexed, names
from .checkpoint import ENCODER_PREFIX, StableSRCheckpointError

FUSION_PREFIX = "decoder.fusion_layer_"
VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
HELP = "StableSR's CFW file is vqgan_cfw_00011.ckpt; put it in ComfyUI/models/stablesr"


class FuseResBlock(nn.Module):
    """GroupNorm(32, eps 1e-6), swish and a 3x3 conv, twice, plus a 1x1 projection when the width changes."""

    def __init__(self, channels: int, out_channels: int, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.norm1 = ops.GroupNorm(32, channels, eps=1e-6, affine=True, **kw)
        self.conv1 = ops.Conv2d(channels, out_channels, 3, padding=1, **kw)
        self.norm2 = ops.GroupNorm(32, out_channels, eps=1e-6, affine=True, **kw)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1, **kw)
        if channels != out_channels:
            self.conv_out = ops.Conv2d(channels, out_channels, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return h + (self.conv_out(x) if hasattr(self, "conv_out") else x)


class ResidualDenseBlock(nn.Module):
    """ESRGAN's dense block: five 3x3 convs, each on the input and every earlier output (LeakyReLU 0.2 between),
    the last scaled by 0.2 and added to the input."""

    def __init__(self, channels: int, growth: int, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        for i in range(1, 5):
            self.add_module(f"conv{i}", ops.Conv2d(channels + (i - 1) * growth, growth, 3, padding=1, **kw))
        self.conv5 = ops.Conv2d(channels + 4 * growth, channels, 3, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            features.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Three dense blocks in a residual scaled by 0.2."""

    def __init__(self, channels: int, growth: int, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(channels, growth, **kw) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class CFWFusion(nn.Module):
    """One fusion layer (the official ``Fuse_sft_block_RRDB``) at a decoder level of ``channels`` width."""

    def __init__(self, channels: int, blocks: int = 2, growth: int = 32, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(ops=ops, dtype=dtype, device=device)
        self.encode_enc_1 = FuseResBlock(2 * channels, channels, **kw)
        self.encode_enc_2 = nn.Sequential(*(RRDB(channels, growth, **kw) for _ in range(blocks)))
        self.encode_enc_3 = FuseResBlock(channels, channels, **kw)

    def forward(self, encoder_feature: torch.Tensor, decoder_feature: torch.Tensor, w: float) -> torch.Tensor:
        """encoder_feature, decoder_feature: [B, C, H, W] -> decoder_feature + w * fusion, [B, C, H, W]."""
        fused = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([encoder_feature,
                                                                                  decoder_feature], 1))))
        return decoder_feature + w * fused


class CFWLayers(nn.Module):
    """The fusion layers by decoder level (``fusion_layer_1`` at level 1, ``fusion_layer_2`` at level 2)."""

    def __init__(self, widths: dict[int, int], blocks: int = 2, growth: int = 32, ops=nn, dtype=None, device=None):
        super().__init__()
        self.levels = sorted(widths)
        for level in self.levels:
            self.add_module(f"fusion_layer_{level}", CFWFusion(widths[level], blocks, growth, ops=ops, dtype=dtype,
                                                               device=device))

    def layer(self, level: int) -> CFWFusion:
        return getattr(self, f"fusion_layer_{level}")

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], **kw) -> "CFWLayers":
        """The layers of ``decoder.fusion_layer_*`` tensors' shapes (keys without the ``decoder.`` prefix)."""
        widths = {int(k.split(".")[0].rsplit("_", 1)[1]): v[0] for k, v in shapes.items()
                  if k.endswith(".encode_enc_3.conv2.weight")}
        first = next(iter(sorted(widths)))
        blocks = 1 + max(int(k.split(".")[2]) for k in shapes
                         if k.startswith(f"fusion_layer_{first}.encode_enc_2."))
        growth = shapes[f"fusion_layer_{first}.encode_enc_2.0.rdb1.conv1.weight"][0]
        return cls(widths, blocks, growth, **kw)


def split_cfw_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint"
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A CFW file's (VAE tensors, fusion tensors without the ``decoder.`` prefix); the rest (the training
    losses' ``loss.*``) is dropped. A file without fusion layers is an error that says what the file is instead."""
    fusion = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith(FUSION_PREFIX)}
    if not fusion:
        raise StableSRCheckpointError(f"{name}: {_what_it_is(sd)} {HELP}.")
    vae = {k: v for k, v in sd.items() if k.startswith(VAE_PREFIXES) and not k.startswith(FUSION_PREFIX)}
    return vae, fusion


def _what_it_is(sd: dict) -> str:
    keys = list(sd)
    if any(k.startswith(ENCODER_PREFIX) or ".spade." in k for k in keys):
        return ("this is StableSR's diffusion checkpoint (UNet, time-aware encoder, SPADE layers), not the CFW "
                "file: load it with Load Checkpoint and StableSR's model loader.")
    if any("control_model." in k or "project_modules." in k for k in keys):
        return "this is a SUPIR file, not StableSR's CFW file; load it with SUPIR Load Model."
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in keys):
        return "this is a Stable Diffusion checkpoint, not StableSR's CFW file: load it with Load Checkpoint."
    if any(k.startswith(VAE_PREFIXES) for k in keys):
        return ("this is a plain VAE without CFW's fusion layers (decoder.fusion_layer_1/2): load it with Load "
                "VAE, and the CFW file here.")
    return f"not a CFW file: no decoder.fusion_layer_* tensors among {len(keys)}."


def fusion_layout(fusion: dict[str, torch.Tensor], name: str = "checkpoint") -> CFWLayers:
    """The fusion layers these tensors fit (on the meta device), checked tensor by tensor."""
    shapes = {k: tuple(v.shape) for k, v in fusion.items()}
    try:
        layers = CFWLayers.from_shapes(shapes, device="meta")
    except (KeyError, ValueError, StopIteration) as e:
        raise StableSRCheckpointError(f"{name}: the fusion layers' tensors do not form CFW's fusion layers "
                                      f"({type(e).__name__}: {e}); the file is damaged or from another model. "
                                      f"{HELP}.") from e
    check_layout({k: v.shape for k, v in layers.state_dict().items()}, shapes, "CFW fusion layers", name)
    return layers


def vae_config(vae: dict[str, torch.Tensor], name: str = "checkpoint") -> tuple[dict, int]:
    """The LDM ``ddconfig`` and ``embed_dim`` of an SD-layout VAE (encoder, decoder, quant convs, no attention
    outside the middle block) from its tensors' shapes: (ddconfig, embed_dim)."""
    try:
        ch = vae["encoder.conv_in.weight"].shape[0]
        levels = count_indexed(vae, r"encoder\.down\.(\d+)\.")
        z_channels = vae["decoder.conv_in.weight"].shape[1]
        config = {"double_z": vae["encoder.conv_out.weight"].shape[0] == 2 * z_channels, "z_channels": z_channels,
                  "resolution": 256, "in_channels": vae["encoder.conv_in.weight"].shape[1],
                  "out_ch": vae["decoder.conv_out.weight"].shape[0], "ch": ch,
                  "ch_mult": [vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)],
                  "num_res_blocks": count_indexed(vae, r"encoder\.down\.0\.block\.(\d+)\."),
                  "attn_resolutions": [], "dropout": 0.0}
        return config, vae["post_quant_conv.weight"].shape[1]
    except KeyError as e:
        raise StableSRCheckpointError(f"{name}: the VAE part is incomplete ({e.args[0]} is missing); the file is "
                                      f"damaged. {HELP}.") from e


def check_fusion_fits(layers: CFWLayers, widths: dict[int, int], what: str, name: str) -> None:
    """Each fusion layer's width equals the VAE level's it joins (``widths``: level -> channels)."""
    for level in layers.levels:
        expected = layers.layer(level).encode_enc_3.conv2.out_channels
        if widths.get(level) != expected:
            found = f"{widths[level]} channels at level {level}" if level in widths else f"no level {level}"
            raise StableSRCheckpointError(f"{name}: fusion_layer_{level} is {expected} channels wide but {what} has "
                                          f"{found}; StableSR's CFW needs the SD 2.1 VAE layout (SD 1.x/2.x VAE).")


def check_cfw_finite(vae: dict[str, torch.Tensor], fusion: dict[str, torch.Tensor], name: str) -> None:
    """Every tensor of a CFW file free of NaN and infinity."""
    if bad := non_finite_tensors({**vae, **{f"decoder.{k}": v for k, v in fusion.items()}}):
        raise StableSRCheckpointError(f"{name}: {len(bad)} tensor(s) hold NaN or infinite values ({names(bad, 4)}); "
                                      f"the file is damaged. Download it again.")


def cfw_layout(vae: dict[str, torch.Tensor], fusion: dict[str, torch.Tensor], name: str) -> CFWLayers:
    """The fusion layers (on the meta device) checked by name and shape, and the SD-VAE part (if any) complete
    enough to give its sizes, which must fit the fusion layers. ``host/cfw_decode.py`` also checks the VAE part
    tensor by tensor against ComfyUI's VAE."""
    layers = fusion_layout(fusion, name)
    if vae:
        config, _ = vae_config(vae, name)
        check_fusion_fits(layers, {i: config["ch"] * m for i, m in enumerate(config["ch_mult"])}, "its VAE", name)
    return layers
