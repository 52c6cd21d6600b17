"""What the learned metrics share: reading a weight file's tensors by name and shape, checking an image pair,
and the transformer building blocks of MUSIQ and MANIQA (attribute names follow the released checkpoints' keys)."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...weights import check_layout, read_state_dict
from ..degradation import check_image


def need(state: dict, key: str, path: str, what: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``state[key]``; a ValueError naming the file when it is missing or (if ``shape`` is given) of another shape."""
    if key not in state:
        raise ValueError(f"{path} is not a {what} file: it has no tensor {key!r}.")
    if shape is not None and tuple(state[key].shape) != shape:
        raise ValueError(f"{path} is not a {what} file: {key!r} has shape {tuple(state[key].shape)}, expected "
                         f"{shape}.")
    return state[key]


def pair_bchw(image: torch.Tensor, reference: torch.Tensor, what: str, min_side: int,
               like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks an IMAGE pair of one shape and returns both as :math:`(B, 3, H, W)` in ``like``'s dtype and device."""
    check_image(image, "image")
    check_image(reference, "reference")
    if image.shape != reference.shape or min(image.shape[1:3]) < min_side:
        raise ValueError(f"{what} compares images of the same size, at least {min_side}x{min_side}; got "
                         f"{tuple(image.shape)} and {tuple(reference.shape)}.")
    return tuple(t.movedim(-1, 1).to(like) for t in (image, reference))


def float_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt``/``.pth`` state dict as float32 (integer buffers kept), DataParallel's ``module.``
    prefixes removed."""
    state = read_state_dict(path)
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_layout(model: nn.Module, state: dict[str, torch.Tensor], path: str, what: str,
                 ignored: Callable[[str], bool] = lambda key: False) -> None:
    """Loads ``state`` into ``model`` (built on the meta device) by assignment after checking that its tensors are
    exactly the model's, by name and shape; keys for which ``ignored`` is true may be present and are skipped."""
    expected = model.state_dict()
    check_layout({k: v.shape for k, v in expected.items()},
                 {k: v.shape for k, v in state.items() if k in expected or not ignored(k)}, f"{what} network", path)
    model.load_state_dict({k: state[k] for k in expected}, assign=True)


def check_divisible(value: int, by: int, path: str, what: str, name: str) -> None:
    """A ValueError naming the file unless ``value`` (its ``name``, derived from a shape) is a multiple of ``by``."""
    if value % by:
        raise ValueError(f"{path} is not a {what} file: its {name} {value} is not a multiple of {by}.")


class Mlp(nn.Module):
    """``fc1`` → exact GELU → ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on :math:`(..., N, C)` projections -> :math:`(..., N, C)`; ``bias`` is
    added to the logits and broadcasts to :math:`(..., heads, N, N)`."""
    split = [t.unflatten(-1, (heads, t.shape[-1] // heads)).transpose(-3, -2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*split, attn_mask=bias).transpose(-3, -2).flatten(-2)


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero padding as TensorFlow's ``SAME``: the output of a ``kernel``/``stride`` window has
    :math:`\\lceil n / stride \\rceil` positions; an odd padding puts the extra pixel after (bottom, right)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)
