"""StableSR's controllable feature wrapping (CFW): the fusion layers its VAE decoder (``Decoder_Mix``) runs after
the ResBlocks of decoder levels 1 and 2, mixing in the LR image's encoder features of the same level:
``out = dec + w * fuse(cat(enc, dec))`` with ``fuse`` = ResBlock(2C -> C), RRDBs, ResBlock(C -> C), and ``w``
the user's fidelity weight (0: the plain decoder; the official default 0.5). Plain torch, sized from the
file's shapes; the names follow ``vqgan_cfw_00011.ckpt`` (``decoder.fusion_layer_{1,2}.*``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSION_PREFIX = "decoder.fusion_layer_"


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


def split_cfw_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A CFW file's (VAE tensors, fusion tensors without the ``decoder.`` prefix); ``loss.*`` is dropped."""
    fusion = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith(FUSION_PREFIX)}
    vae = {k: v for k, v in sd.items() if not k.startswith((FUSION_PREFIX, "loss."))}
    return vae, fusion
