"""DISTS."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ...weights import read_state_dict
from .common import need, pair_bchw


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DISTS(nn.Module):
    """DISTS (Ding, Ma, Wang and Simoncelli, "Image Quality Assessment: Unifying Structure and Texture Similarity",
    TPAMI 2020), as the authors' PyTorch release computes it.

    Six representations of each image: the image itself (RGB in [0, 1]) and the last ReLU of each of VGG16's five
    conv stages on the ImageNet-normalised image, where each 2×2 max pool between stages is replaced by L2 pooling:
    the square root of a 3×3 Hann-window blur (the inner taps of ``hanning(5)``, i.e. (1 2 1)ᵀ(1 2 1) / 16) of the
    squared activations, stride 2, padding 1. For every channel of every representation, with the spatial means
    μ, variances σ² and covariance σxy of the two images,

    texture  :math:`l = (2 μ_x μ_y + c_1) / (μ_x^2 + μ_y^2 + c_1)`,
    structure :math:`s = (2 σ_{xy} + c_2) / (σ_x^2 + σ_y^2 + c_2)`, :math:`c_1 = c_2 = 10^{-6}`,

    and :math:`D = 1 - \\sum (α l + β s) / \\sum (α + β)` over the 1475 channels (3 + 64 + 128 + 256 + 512 + 512)
    with the released α, β. 0 for identical images; larger is worse; symmetric in its two arguments. Images are
    scored at their own size (the authors' demo script first shrinks images whose short side exceeds 256 px to 256).
    """
    STAGE_CONVS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # conv output channels
    CHANNELS = (3, 64, 128, 256, 512, 512)  # the image, then each stage
    C1 = C2 = 1e-6

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList()
        c_in = 3
        for convs in self.STAGE_CONVS:
            self.stages.append(nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip((c_in, *convs), convs)))
            c_in = convs[-1]
        taps = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        window = taps[:, None] * taps[None, :]
        self.register_buffer("pool_window", (window / window.sum()).float().view(1, 1, 3, 3))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("alpha", torch.ones(sum(self.CHANNELS)))
        self.register_buffer("beta", torch.ones(sum(self.CHANNELS)))

    @classmethod
    def torchvision_indices(cls) -> list[list[int]]:
        """Each stage's conv positions in torchvision's ``vgg16().features``: conv/ReLU pairs, a max pool after each
        stage, i.e. [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]."""
        out, index = [], 0
        for convs in cls.STAGE_CONVS:
            out.append(list(range(index, index + 2 * len(convs), 2)))
            index += 2 * len(convs) + 1
        return out

    @classmethod
    def from_files(cls, vgg_path: str, weights_path: str) -> "DISTS":
        """Loads torchvision's ImageNet VGG16 state dict (``features.N.weight/bias``; the classifier is ignored) and
        the DISTS release's ``{"alpha", "beta"}``, each :math:`(1, 1475, 1, 1)`."""
        model = cls()
        vgg, weights = read_state_dict(vgg_path), read_state_dict(weights_path)
        state = model.state_dict()
        for s, indices in enumerate(cls.torchvision_indices()):
            for k, idx in enumerate(indices):
                conv = model.stages[s][k]
                for p in ("weight", "bias"):
                    state[f"stages.{s}.{k}.{p}"] = need(vgg, f"features.{idx}.{p}", vgg_path, "torchvision VGG16",
                                                         tuple(getattr(conv, p).shape))
        n = sum(cls.CHANNELS)
        for name in ("alpha", "beta"):
            state[name] = need(weights, name, weights_path, "DISTS alpha/beta", (1, n, 1, 1)).detach().reshape(n)
        if (state["alpha"].sum() + state["beta"].sum()).item() == 0:
            raise ValueError(f"{weights_path}: alpha and beta sum to 0, so DISTS is undefined; use the released "
                             "weights.pt.")
        model.load_state_dict(state)
        return model.eval()

    def l2_pool(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`(B, C, H, W) \\to (B, C, \\lceil H/2 \\rceil, \\lceil W/2 \\rceil)`."""
        window = self.pool_window.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return (F.conv2d(x * x, window, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()

    def representations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image :math:`(B, 3, H, W)` in [0, 1] and its five stage outputs (relu1_2, relu2_2, relu3_3, relu4_3,
        relu5_3)."""
        out = [x]
        h = (x - self.mean) / self.std
        for s, stage in enumerate(self.stages):
            if s:
                h = self.l2_pool(h)
            for conv in stage:
                h = F.relu(conv(h))
            out.append(h)
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """IMAGE :math:`(B, H, W, 3)` pair in [0, 1] -> distance :math:`(B,)` float64, 0 for identical images.

        The statistics are taken in float64 (the features in float32), so identical images give 0 to ~1e-12.
        """
        x, y = pair_bchw(image, reference, "DISTS", 1, self.mean)
        alphas = self.alpha.double().split(self.CHANNELS)
        betas = self.beta.double().split(self.CHANNELS)
        similarity = 0
        for fx, fy, alpha, beta in zip(self.representations(x), self.representations(y), alphas, betas):
            fx, fy = fx.double(), fy.double()
            mx, my = fx.mean(dim=(2, 3)), fy.mean(dim=(2, 3))
            vx = (fx - mx[..., None, None]).pow(2).mean(dim=(2, 3))
            vy = (fy - my[..., None, None]).pow(2).mean(dim=(2, 3))
            cov = (fx * fy).mean(dim=(2, 3)) - mx * my
            texture = (2 * mx * my + self.C1) / (mx ** 2 + my ** 2 + self.C1)
            structure = (2 * cov + self.C2) / (vx + vy + self.C2)
            similarity = similarity + (texture * alpha + structure * beta).sum(dim=1)
        return (1 - similarity / (self.alpha.double().sum() + self.beta.double().sum())).cpu()
