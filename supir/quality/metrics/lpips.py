"""LPIPS (AlexNet, v0.1)."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ...weights import read_state_dict
from .common import need, pair_bchw


class LPIPS(nn.Module):
    """LPIPS v0.1 on the AlexNet trunk (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
    Perceptual Metric", CVPR 2018).

    The images, mapped to [-1, 1] and normalised by LPIPS' fixed shift and scale, go through AlexNet's five
    conv+ReLU layers; each layer's activations are scaled to unit length along channels, the squared differences are
    weighted per channel by a learned non-negative 1×1 head, averaged over space and summed over the layers.
    """
    CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
    TORCHVISION_INDEX = (0, 3, 6, 8, 10)  # the convs' positions in torchvision's ``alexnet().features``
    POOL_BEFORE = (1, 2)  # 3×3 stride-2 max pools before conv2 and conv3
    MIN_SIDE = 31  # smallest input for which the second pool still has an output

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in self.CONVS)
        self.heads = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, *_ in self.CONVS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, alexnet_path: str, heads_path: str) -> "LPIPS":
        """Loads torchvision's ImageNet AlexNet state dict and the LPIPS v0.1 linear heads (``lin{k}.model.1``)."""
        model = cls()
        trunk, heads = read_state_dict(alexnet_path), read_state_dict(heads_path)
        state = {}
        for k, idx in enumerate(cls.TORCHVISION_INDEX):
            for p in ("weight", "bias"):
                state[f"convs.{k}.{p}"] = need(trunk, f"features.{idx}.{p}", alexnet_path, "torchvision AlexNet")
            state[f"heads.{k}.weight"] = need(heads, f"lin{k}.model.1.weight", heads_path, "LPIPS v0.1 heads")
        model.load_state_dict(state | {"shift": model.shift, "scale": model.scale})
        return model.eval()

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1..relu5 activations of :math:`(B, 3, H, W)` in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for k, conv in enumerate(self.convs):
            if k in self.POOL_BEFORE:
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            out.append(x)
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` pair in [0, 1] -> distance :math:`(B,)`, 0 for identical images."""
        x, y = (t * 2 - 1 for t in pair_bchw(image, reference, "LPIPS", self.MIN_SIDE, self.shift))
        total = 0
        for fx, fy, head in zip(self.layers(x), self.layers(y), self.heads):
            fx, fy = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) for f in (fx, fy))
            total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return total.double()
