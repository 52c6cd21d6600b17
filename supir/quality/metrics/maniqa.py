"""MANIQA (KonIQ-10k)."""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ...weights import count_indexed
from ..degradation import check_image
from .common import Mlp, check_divisible, float_state_dict, load_layout, multi_head_attention, need


class _QKVAttention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output ``proj`` (timm's layout)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`(..., N, C) \\to (..., N, C)`; ``bias`` is added to the attention logits."""
        return self.proj(multi_head_attention(*self.qkv(x).chunk(3, dim=-1), self.heads, bias))


class _ViTBlock(nn.Module):
    """timm's pre-norm ViT block (LayerNorm ε 1e-6)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _QKVAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TransposedAttention(nn.Module):
    """MANIQA's transposed attention block: attention between the C channels, each a vector over the N tokens,
    with the scale :math:`N^{-1/2}`, plus the input. :math:`(B, C, N) \\to (B, C, N)`."""

    def __init__(self, tokens: int):
        super().__init__()
        self.c_q, self.c_k, self.c_v = (nn.Linear(tokens, tokens) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        out = F.scaled_dot_product_attention(self.c_q(x), self.c_k(x), self.c_v(x))
        # The released code turns the (B, C, N) result into (B, N, C) and reads that memory back as (B, C, N) — a
        # reshape, not a transpose, which mixes channels and tokens. The weights were trained with it.
        return out.transpose(1, 2).reshape(b, c, n) + x


class _WindowAttention(_QKVAttention):
    """Swin window attention: a learned bias per head for each relative offset within the window."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__(dim, heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", torch.zeros(window ** 2, window ** 2, dtype=torch.long))

    def position_bias(self) -> torch.Tensor:
        """:math:`(heads, w^2, w^2)`."""
        n = self.relative_position_index.shape[0]
        return self.relative_position_bias_table[self.relative_position_index.flatten()].view(n, n, -1).permute(2, 0, 1)


class _SwinBlock(nn.Module):
    """Swin block on a :math:`(B, H, W, C)` map: LayerNorm, attention in ``window`` × ``window`` windows (cyclically
    shifted by ``shift`` first, with the released ``attn_mask`` keeping wrapped-around regions apart), LayerNorm,
    MLP; both with residuals. The relative-position index and the mask are read from the checkpoint."""

    def __init__(self, dim: int, mlp_dim: int, heads: int, window: int, shift: int, grid: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)
        if shift:
            self.register_buffer("attn_mask", torch.zeros((grid // window) ** 2, window ** 2, window ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        k, s = self.window, self.shift
        y = torch.roll(self.norm1(x), (-s, -s), (1, 2)) if s else self.norm1(x)
        windows = y.view(b, h // k, k, w // k, k, c).transpose(2, 3).reshape(b, -1, k * k, c)
        bias = self.attn.position_bias()
        if s:
            bias = bias + self.attn_mask[:, None]  # (windows, heads, k², k²)
        y = self.attn(windows, bias).view(b, h // k, w // k, k, k, c).transpose(2, 3).reshape(b, h, w, c)
        x = x + (torch.roll(y, (s, s), (1, 2)) if s else y)
        return x + self.mlp(self.norm2(x))


class _SwinStage(nn.Module):
    """Swin blocks (every second one shifted by half a window), then a 3×3 conv and ReLU."""

    def __init__(self, dim: int, depth: int, mlp_dim: int, heads: int, window: int, grid: int):
        super().__init__()
        self.blocks = nn.ModuleList(_SwinBlock(dim, mlp_dim, heads, window, window // 2 if i % 2 else 0, grid)
                                    for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, H, W, C) \\to (B, H, W, C)`."""
        for block in self.blocks:
            x = block(x)
        return F.relu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class _ScaleSwin(nn.Module):
    """MANIQA's scale Swin Transformer block: each stage's output is added to its input scaled by ``scale``."""

    def __init__(self, dim: int, depths: tuple[int, ...], mlp_dim: int, heads: int, window: int, grid: int,
                 scale: float):
        super().__init__()
        self.scale = scale
        self.layers = nn.ModuleList(_SwinStage(dim, d, mlp_dim, heads, window, grid) for d in depths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, C, H, W) \\to (B, C, H, W)`."""
        x = x.permute(0, 2, 3, 1)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.permute(0, 3, 1, 2)


class MANIQA(nn.Module):
    """MANIQA (Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment",
    CVPR Workshops 2022), the authors' KonIQ-10k model. No reference; higher is better; about 0-1.

    A 224×224 crop, normalised to [-1, 1], goes through timm's ViT-B/8; the patch tokens (28 × 28) of blocks 7-10
    (indices 6-9) are concatenated (3072 channels). Two transposed attention blocks, a 1×1 conv to 768 channels and a
    scale Swin Transformer block (two stages of two Swin blocks, 4 heads, 4×4 windows, MLP 768, a 3×3 conv, stage
    residuals scaled by 0.8), then again two transposed attention blocks, a 1×1 conv to 384 channels and a second
    scale Swin block. Per patch, a score branch (Linear, ReLU, Linear, ReLU) and a weight branch (Linear, ReLU,
    Linear, sigmoid) give :math:`s_i, w_i`; the crop scores :math:`\\sum w_i s_i / \\sum w_i`.

    The image score is the mean over ``num_crops`` random 224×224 crops, as the authors' ``predict_one_image.py``
    (20 crops). Their positions are drawn from a generator seeded with ``seed`` for each image size, so a score is
    reproducible and every image of a batch gets the same crops. An image with a side under 224 px is first resized
    (bilinear) so its shorter side is 224. pyiqa instead pools the patches of 20 crops on a fixed grid into one
    weighted mean, so its scores differ slightly.
    """
    VIT_HEADS = 12
    FEATURE_BLOCKS = (6, 7, 8, 9)
    SWIN_SCALE = 0.8  # the KonIQ-10k (and KADID-10k) models' setting; the PIPAL one was trained with 0.13

    def __init__(self, vit_dim: int = 768, vit_mlp: int = 3072, patch: int = 8, grid: int = 28, embed_dim: int = 768,
                 num_tab: int = 2, depths: tuple[int, ...] = (2, 2), swin_heads: int = 4, window: int = 4,
                 swin_mlp: int = 768, num_crops: int = 20, seed: int = 0):
        super().__init__()
        if num_crops < 1:
            raise ValueError(f"MANIQA needs at least one crop; got num_crops={num_crops}.")
        self.crop, self.num_crops, self.seed = grid * patch, num_crops, seed
        self.vit = nn.Module()
        self.vit.cls_token = nn.Parameter(torch.zeros(1, 1, vit_dim))
        self.vit.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, vit_dim))
        self.vit.patch_embed = nn.Module()
        self.vit.patch_embed.proj = nn.Conv2d(3, vit_dim, patch, patch)
        self.vit.blocks = nn.ModuleList(_ViTBlock(vit_dim, vit_mlp, self.VIT_HEADS)
                                        for _ in range(max(self.FEATURE_BLOCKS) + 1))
        swin = dict(depths=depths, mlp_dim=swin_mlp, heads=swin_heads, window=window, grid=grid,
                    scale=self.SWIN_SCALE)
        self.tablock1 = nn.ModuleList(_TransposedAttention(grid * grid) for _ in range(num_tab))
        self.conv1 = nn.Conv2d(len(self.FEATURE_BLOCKS) * vit_dim, embed_dim, 1)
        self.swintransformer1 = _ScaleSwin(embed_dim, **swin)
        self.tablock2 = nn.ModuleList(_TransposedAttention(grid * grid) for _ in range(num_tab))
        self.conv2 = nn.Conv2d(embed_dim, embed_dim // 2, 1)
        self.swintransformer2 = _ScaleSwin(embed_dim // 2, **swin)
        half = embed_dim // 2
        # index 2 is the training-time dropout, so the linears keep the checkpoint's indices 0 and 3
        self.fc_score = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Identity(), nn.Linear(half, 1), nn.ReLU())
        self.fc_weight = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Identity(), nn.Linear(half, 1),
                                       nn.Sigmoid())

    @staticmethod
    def unused(key: str) -> bool:
        """Checkpoint tensors MANIQA never uses: the ViT's last blocks, final norm and classifier, and the Swin
        modules' ``downsample`` conv (defined but never called)."""
        block = re.match(r"vit\.blocks\.(\d+)\.", key)
        return (key.startswith(("vit.norm.", "vit.head.", "swintransformer1.downsample.",
                                "swintransformer2.downsample."))
                or (block is not None and int(block.group(1)) > max(MANIQA.FEATURE_BLOCKS)))

    @classmethod
    def from_file(cls, path: str, num_crops: int = 20, seed: int = 0) -> "MANIQA":
        """Reads the authors' ``ckpt_koniq10k.pt`` (a state dict that includes the ViT-B/8 backbone)."""
        return cls.from_state_dict(float_state_dict(path), path, num_crops, seed)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], path: str, num_crops: int = 20,
                        seed: int = 0) -> "MANIQA":
        """Builds the model from a checkpoint's tensors (``path`` names it in errors). Sizes come from the tensor
        shapes (ViT width, patch and token grid; channels; Swin depths, heads, window and MLP); every tensor is
        checked by name and shape. The tensors are used as they are (meta tensors give a model on the meta
        device)."""
        what = "MANIQA"
        _, tokens, vit_dim = need(state, "vit.pos_embed", path, what).shape
        grid = math.isqrt(tokens - 1)
        check_divisible(vit_dim, cls.VIT_HEADS, path, what, "ViT width")
        table = need(state, "swintransformer1.layers.0.blocks.0.attn.relative_position_bias_table", path, what)
        window, swin_heads = (math.isqrt(table.shape[0]) + 1) // 2, table.shape[1]
        embed_dim = need(state, "conv1.weight", path, what).shape[0]
        check_divisible(embed_dim // 2, swin_heads, path, what, "second Swin width")
        check_divisible(grid, window, path, what, "token grid")
        depths = tuple(count_indexed(state, rf"swintransformer1\.layers\.{i}\.blocks\.(\d+)\.norm1\.weight")
                       for i in range(count_indexed(state, r"swintransformer1\.layers\.(\d+)\.conv\.weight")))
        model_args = dict(
            vit_dim=vit_dim, grid=grid, embed_dim=embed_dim, depths=depths, swin_heads=swin_heads, window=window,
            vit_mlp=need(state, "vit.blocks.0.mlp.fc1.weight", path, what).shape[0],
            patch=need(state, "vit.patch_embed.proj.weight", path, what).shape[-1],
            num_tab=count_indexed(state, r"tablock1\.(\d+)\.c_q\.weight"),
            swin_mlp=need(state, "swintransformer1.layers.0.blocks.0.mlp.fc1.weight", path, what).shape[0])
        with torch.device("meta"):
            model = cls(**model_args, num_crops=num_crops, seed=seed)
        load_layout(model, state, path, what, ignored=cls.unused)
        return model.eval()

    def vit_features(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops :math:`(B, 3, S, S)` -> the patch tokens of the feature blocks, concatenated along
        channels :math:`(B, N, 4 D)`."""
        x = self.vit.patch_embed.proj(crops).flatten(2).transpose(1, 2)
        x = torch.cat([self.vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.vit.pos_embed
        features = []
        for i, block in enumerate(self.vit.blocks):
            x = block(x)
            if i in self.FEATURE_BLOCKS:
                features.append(x[:, 1:])
        return torch.cat(features, dim=-1)

    def patch_scores(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised crops :math:`(B, 3, S, S)` -> per-patch scores and weights, each :math:`(B, N)`."""
        x = self.vit_features(crops).transpose(1, 2)
        b, grid = x.shape[0], self.crop // self.vit.patch_embed.proj.kernel_size[0]
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.reshape(b, -1, grid, grid))).flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.reshape(b, -1, grid, grid))).flatten(2).transpose(1, 2)
        return self.fc_score(x)[..., 0], self.fc_weight(x)[..., 0]

    def crop_scores(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops :math:`(B, 3, S, S)` -> :math:`\\sum_i w_i s_i / \\sum_i w_i` :math:`(B,)`."""
        score, weight = self.patch_scores(crops)
        return (weight * score).sum(-1) / weight.sum(-1)

    def crop_positions(self, height: int, width: int) -> list[tuple[int, int]]:
        """``num_crops`` (top, left) corners of S × S crops, uniform over the image, from a generator seeded with
        ``seed``."""
        g = torch.Generator().manual_seed(self.seed)
        tops = torch.randint(0, height - self.crop + 1, (self.num_crops,), generator=g)
        lefts = torch.randint(0, width - self.crop + 1, (self.num_crops,), generator=g)
        return list(zip(tops.tolist(), lefts.tolist()))

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> :math:`(B, 3, H', W')` in [-1, 1], resized (bilinear) so that the
        shorter side is at least the crop size."""
        check_image(image)
        x = image.movedim(-1, 1).to(self.conv1.weight) * 2 - 1
        h, w = x.shape[-2:]
        if min(h, w) < self.crop:
            size = (self.crop, round(w * self.crop / h)) if h <= w else (round(h * self.crop / w), self.crop)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> the mean crop score :math:`(B,)` float64; the reference is
        ignored."""
        x, s = self.prepare(image), self.crop
        scores = [self.crop_scores(x[..., top:top + s, left:left + s])
                  for top, left in self.crop_positions(*x.shape[-2:])]
        return torch.stack(scores).mean(0).double().cpu()
