"""MUSIQ (KonIQ-10k), pyiqa's PyTorch conversion."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...weights import count_indexed
from ..degradation import check_image
from .common import (Mlp, check_divisible, float_state_dict, load_layout, multi_head_attention, need,
                     tf_same_pad)


class _StdConv(nn.Conv2d):
    """Weight-standardised convolution (BiT) with TensorFlow ``SAME`` padding, no bias.

    Each output filter is standardised by its mean and unbiased standard deviation (+1e-5), as pyiqa's port does;
    the JAX original divides by the population standard deviation. A GroupNorm follows every such convolution, so
    the two differ only through the small ε's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(tf_same_pad(x, self.kernel_size[0], self.stride[0]), w, stride=self.stride)


class _MusiqBottleneck(nn.Module):
    """The ResNet bottleneck unit of MUSIQ's patch stem: 1×1, 3×3, 1×1 standardised convs with GroupNorm (32 groups,
    ε 1e-4) and a projected shortcut."""

    def __init__(self, width: int, out: int):
        super().__init__()
        self.conv1, self.gn1 = _StdConv(width, width, 1, bias=False), nn.GroupNorm(32, width, eps=1e-4)
        self.conv2, self.gn2 = _StdConv(width, width, 3, bias=False), nn.GroupNorm(32, width, eps=1e-4)
        self.conv3, self.gn3 = _StdConv(width, out, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj, self.gn_proj = _StdConv(width, out, 1, bias=False), nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(x))
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return F.relu(self.gn3(self.conv3(x)) + shortcut)


class _MusiqAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(multi_head_attention(self.query(x), self.key(x), self.value(x), self.heads))


class _MusiqBlock(nn.Module):
    """Pre-norm Transformer encoder block (LayerNorm ε 1e-6)."""

    def __init__(self, dim: int, mlp_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = _MusiqAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _MusiqEncoder(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, layers: int, grid: int, scales: int, heads: int):
        super().__init__()
        self.posembed_input = nn.Module()
        self.posembed_input.position_emb = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.scaleembed_input = nn.Module()
        self.scaleembed_input.scale_emb = nn.Parameter(torch.zeros(scales, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _MusiqBlock(dim, mlp_dim, heads)
                                          for i in range(layers)})
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedded patches :math:`(B, N, D)` -> the normalised class token :math:`(B, D)`."""
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x[:, 0])


def hashed_positions(grid: int, count_h: int, count_w: int) -> torch.Tensor:
    """MUSIQ's hash-based 2-D positions of a ``count_h`` × ``count_w`` patch grid, row by row: patch (i, j) gets
    embedding ``t_i · grid + t_j`` of the ``grid`` × ``grid`` table, where ``t`` maps the patch rows (columns) onto
    the grid by nearest-neighbour resizing without half-pixel centres, :math:`t_i = \\lfloor i \\cdot grid / count
    \\rfloor` (TF1's resize and torch's ``nearest``). :math:`\\to (count_h \\cdot count_w,)` int64."""
    def onto_grid(count: int) -> torch.Tensor:
        table = torch.arange(grid, dtype=torch.float32).view(1, 1, grid)
        return F.interpolate(table, size=count, mode="nearest").view(count).long()
    return (onto_grid(count_h)[:, None] * grid + onto_grid(count_w)[None, :]).flatten()


class MUSIQ(nn.Module):
    """MUSIQ (Ke, Wang, Wang, Milanfar and Yang, "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021), the
    KonIQ-10k model as pyiqa's PyTorch port of the official checkpoint computes it. No reference; higher is better;
    KonIQ-10k's MOS scale (about 0-100; the raw regression output, not clamped).

    The image, mapped to [-1, 1], is seen at three scales: resized (bicubic, aspect ratio kept, sides rounded) so the
    longer side is 224, then 384, and at its own resolution. Each scale is zero-padded as TensorFlow's ``SAME`` to a
    multiple of 32 and cut into 32×32 patches; each patch goes through a small ResNet stem (7×7/2 standardised conv,
    GroupNorm, ReLU, 3×3/2 max pool, one bottleneck unit: 256 × 8 × 8 features, flattened in TensorFlow's H, W, C
    order) and a linear embedding. A patch's hash position (:func:`hashed_positions`, a 10×10 grid) and its scale
    select the learned embeddings added to it. A class token and all patches of all scales go through a 14-layer
    Transformer encoder (width 384, 6 heads, MLP 1152); a linear head on the class token gives the score.

    The official preprocessing pads each resized scale to a fixed length with masked tokens, which no real token
    attends to; they are left out here, which gives the same class token. pyiqa's port (whose file is read) differs
    from Google's JAX code, which resizes with TensorFlow's Gaussian kernel and uses the tanh approximation of GELU:
    pyiqa reports scores within about 3 % of the official ones; this class follows the port.
    """
    HEADS = 6
    STEM_WIDTH = 64
    LONGER_SIDES = (224, 384)
    STEM_CHUNK = 1024  # patches per pass through the stem, bounding memory on large images
    WHAT = "pyiqa MUSIQ (KonIQ-10k)"

    def __init__(self, hidden: int = 384, mlp_dim: int = 1152, layers: int = 14, grid: int = 10, patch: int = 32):
        super().__init__()
        self.patch = patch
        self.conv_root = _StdConv(3, self.STEM_WIDTH, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, self.STEM_WIDTH, eps=1e-6)
        self.block1 = _MusiqBottleneck(self.STEM_WIDTH, 4 * self.STEM_WIDTH)
        self.embedding = nn.Linear(4 * self.STEM_WIDTH * math.ceil(patch / 4) ** 2, hidden)
        self.transformer_encoder = _MusiqEncoder(hidden, mlp_dim, layers, grid, len(self.LONGER_SIDES) + 1,
                                                 self.HEADS)
        self.head = nn.Linear(hidden, 1)

    @classmethod
    def from_file(cls, path: str) -> "MUSIQ":
        """Reads pyiqa's ``musiq_koniq_ckpt-e95806b9.pth``."""
        return cls.from_state_dict(float_state_dict(path), path)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], path: str) -> "MUSIQ":
        """Builds the model from a checkpoint's tensors (``path`` names it in errors): width, MLP size, depth, hash
        grid and patch size come from the tensor shapes, and every tensor is checked by name and shape. The tensors
        are used as they are (meta tensors give a model on the meta device)."""
        what = cls.WHAT
        hidden, stem_out = need(state, "embedding.weight", path, what).shape
        check_divisible(hidden, cls.HEADS, path, what, "width")
        token_side = math.isqrt(stem_out // (4 * cls.STEM_WIDTH))
        grid = math.isqrt(need(state, "transformer_encoder.posembed_input.position_emb", path, what).shape[1])
        mlp_dim = need(state, "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight", path, what).shape[0]
        layers = count_indexed(state, r"transformer_encoder\.transformer\.encoderblock_(\d+)\.norm1\.weight")
        with torch.device("meta"):
            model = cls(hidden, mlp_dim, layers, grid, 4 * token_side)
        load_layout(model, state, path, what)
        return model.eval()

    def patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """The stem: :math:`(N, 3, P, P) \\to (N, P/4 \\cdot P/4 \\cdot 256)`, flattened in H, W, C order."""
        out = []
        for chunk in patches.split(self.STEM_CHUNK):
            x = F.relu(self.gn_root(self.conv_root(chunk)))
            x = self.block1(F.max_pool2d(tf_same_pad(x, 3, 2), 3, 2))
            out.append(x.permute(0, 2, 3, 1).flatten(1))
        return torch.cat(out)

    def scale_tokens(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """One scale :math:`(B, 3, H, W)` in [-1, 1] -> its embedded patches with position and scale embeddings
        :math:`(B, \\lceil H/P \\rceil \\lceil W/P \\rceil, D)`, row by row."""
        b, p = x.shape[0], self.patch
        x = tf_same_pad(x, p, p)
        count_h, count_w = x.shape[2] // p, x.shape[3] // p
        patches = x.view(b, 3, count_h, p, count_w, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, p, p)
        tokens = self.embedding(self.patch_features(patches).view(b, count_h * count_w, -1))
        encoder = self.transformer_encoder
        grid = math.isqrt(encoder.posembed_input.position_emb.shape[1])
        tokens = tokens + encoder.posembed_input.position_emb[0, hashed_positions(grid, count_h, count_w)]
        return tokens + encoder.scaleembed_input.scale_emb[scale]

    def scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The resized views (longer side 224, 384) and the image itself, :math:`(B, 3, h_s, w_s)`."""
        h, w = x.shape[-2:]
        views = []
        for side in self.LONGER_SIDES:
            ratio = side / max(h, w)
            size = (round(h * ratio), round(w * ratio))
            if min(size) < 1:
                raise ValueError(f"MUSIQ: a {h}x{w} image is too thin to resize to a longer side of {side}.")
            views.append(F.interpolate(x, size=size, mode="bicubic", align_corners=False))
        return views + [x]

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` in [0, 1] -> score :math:`(B,)` float64; the reference is ignored."""
        check_image(image)
        x = image.movedim(-1, 1).to(self.head.weight) * 2 - 1
        tokens = torch.cat([self.scale_tokens(view, s) for s, view in enumerate(self.scales(x))], dim=1)
        return self.head(self.transformer_encoder(tokens))[:, 0].double().cpu()
