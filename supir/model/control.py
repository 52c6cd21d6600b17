"""SUPIR's control network: the control trunk (GLVControl) and the 12 UNet adaptors (ZeroSFT, ZeroCrossAttn).

Hyper-parameters are read from tensor shapes (``TrunkConfig.from_state_dict``, ``adaptor_specs``), so the
full-size v0 files and tiny test networks load through the same code. ``SUPIRControl``'s state-dict keys are
the checkpoint's keys without their ``model.`` / ``model.diffusion_model.`` prefixes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..weights import count_indexed
from .layers import (Attention, Downsample, ResBlock, SpatialTransformer, TimestepSequential, head_count,
                     sdpa_attention, timestep_embedding, CrossAttention)


class SUPIRConfigError(ValueError):
    """The tensors do not describe a SUPIR network this code can build."""


def _require(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise SUPIRConfigError(f"missing tensor '{key}'")
    return sd[key]


@dataclass(frozen=True)
class TrunkConfig:
    """Shape of the trunk. ``blocks`` describes input blocks 1.. as ``(out_channels, transformer_depth)``
    for a ResBlock stage or ``None`` for a Downsample; input block 0 is the conv_in."""
    in_channels: int
    hint_channels: int
    model_channels: int
    time_embed_dim: int
    adm_in_channels: int
    context_dim: int
    blocks: tuple
    middle_depth: int

    @classmethod
    def from_state_dict(cls, sd: dict) -> "TrunkConfig":
        conv_in = _require(sd, "input_blocks.0.0.weight")
        blocks, i = [], 1
        while f"input_blocks.{i}.0.op.weight" in sd or f"input_blocks.{i}.0.in_layers.0.weight" in sd:
            if f"input_blocks.{i}.0.op.weight" in sd:
                blocks.append(None)
            else:
                out = _require(sd, f"input_blocks.{i}.0.out_layers.3.weight").shape[0]
                depth = count_indexed(sd, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
                if depth:
                    if _require(sd, f"input_blocks.{i}.1.proj_in.weight").ndim != 2:
                        raise SUPIRConfigError("convolutional proj_in (SD1.x/2.x layout); SUPIR needs SDXL's linear one")
                blocks.append((out, depth))
            i += 1
        middle_depth = count_indexed(sd, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
        context_dims = {v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")}
        if len(context_dims) > 1:
            raise SUPIRConfigError(f"cross-attention context widths differ: {sorted(context_dims)}")
        context_dim = context_dims.pop() if context_dims else None
        if not blocks or context_dim is None or "middle_block.0.in_layers.0.weight" not in sd:
            raise SUPIRConfigError("the control trunk has no input/middle blocks with cross-attention")
        return cls(
            in_channels=conv_in.shape[1],
            hint_channels=_require(sd, "input_hint_block.0.weight").shape[1],
            model_channels=conv_in.shape[0],
            time_embed_dim=_require(sd, "time_embed.0.weight").shape[0],
            adm_in_channels=_require(sd, "label_emb.0.0.weight").shape[1],
            context_dim=context_dim,
            blocks=tuple(blocks),
            middle_depth=middle_depth,
        )

    @classmethod
    def for_unet(cls, unet_config: dict, hint_channels: int = 4) -> "TrunkConfig":
        """The trunk that mirrors a UNet described in ComfyUI's ``unet_config`` vocabulary
        (``model_channels``, ``channel_mult``, ``num_res_blocks``, ``transformer_depth``, ...)."""
        mc, blocks, depths = unet_config["model_channels"], [], iter(unet_config["transformer_depth"])
        levels = len(unet_config["channel_mult"])
        for level, (mult, n_res) in enumerate(zip(unet_config["channel_mult"], unet_config["num_res_blocks"])):
            blocks += [(mc * mult, next(depths)) for _ in range(n_res)]
            if level < levels - 1:
                blocks.append(None)
        return cls(unet_config.get("in_channels", 4), hint_channels, mc, mc * 4, unet_config["adm_in_channels"],
                   unet_config["context_dim"], tuple(blocks), unet_config["transformer_depth_middle"])

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the features the trunk returns: one per input block, then the middle block."""
        chans, ch = [self.model_channels], self.model_channels
        for spec in self.blocks:
            ch = ch if spec is None else spec[0]
            chans.append(ch)
        return chans + [ch]

    def unet_config(self) -> dict:
        """The same shape in ComfyUI's ``unet_config`` vocabulary, to compare with the SDXL UNet it drives."""
        levels, depths = [[]], []
        for spec in self.blocks:
            if spec is None:
                levels.append([])
            else:
                levels[-1].append(spec[0])
                depths.append(spec[1])
        return {
            "in_channels": self.in_channels,
            "model_channels": self.model_channels,
            "channel_mult": tuple(lv[-1] // self.model_channels for lv in levels),
            "num_res_blocks": tuple(len(lv) for lv in levels),
            "transformer_depth": tuple(depths),
            "transformer_depth_middle": self.middle_depth,
            "context_dim": self.context_dim,
            "adm_in_channels": self.adm_in_channels,
        }


@dataclass(frozen=True)
class SFTSpec:
    control_channels: int
    skip_channels: int
    main_channels: int
    hidden_channels: int = 128


@dataclass(frozen=True)
class CrossAttnSpec:
    control_channels: int
    query_channels: int


def adaptor_specs(sd: dict) -> list[SFTSpec | CrossAttnSpec]:
    """Specs of ``project_modules.0..N-1`` from their tensor shapes (keys without the ``project_modules.`` prefix)."""
    n = count_indexed(sd, r"(\d+)\.")
    specs = []
    for i in range(n):
        if f"{i}.zero_conv.weight" in sd:
            total = _require(sd, f"{i}.zero_mul.weight").shape[0]
            skip = sd[f"{i}.zero_conv.weight"].shape[0]
            hidden, control = _require(sd, f"{i}.mlp_shared.0.weight").shape[:2]
            specs.append(SFTSpec(control, skip, total - skip, hidden))
        elif f"{i}.attn.to_q.weight" in sd:
            specs.append(CrossAttnSpec(_require(sd, f"{i}.attn.to_k.weight").shape[1], sd[f"{i}.attn.to_q.weight"].shape[0]))
        else:
            raise SUPIRConfigError(f"project_modules.{i} is neither a ZeroSFT nor a ZeroCrossAttn")
    return specs


def adaptors_for(trunk: TrunkConfig) -> list[SFTSpec | CrossAttnSpec]:
    """SUPIR's adaptor list for the SDXL-style UNet this trunk mirrors: a ZeroSFT per decoder join (the
    middle block's last) and a ZeroCrossAttn before every Upsample of an attention level, in index order."""
    cfg = trunk.unet_config()
    skips = trunk.feature_channels
    h = skips.pop()
    backwards = [SFTSpec(h, h, 0)]
    depths = iter(reversed(cfg["transformer_depth"]))
    for level in reversed(range(len(cfg["channel_mult"]))):
        n_res = cfg["num_res_blocks"][level]
        attention = any([next(depths) for _ in range(n_res)])
        for j in range(n_res + 1):
            skip = skips.pop()
            backwards.append(SFTSpec(skip, skip, h))
            h = trunk.model_channels * cfg["channel_mult"][level]
            if level > 0 and j == n_res and attention:
                backwards.append(CrossAttnSpec(skip, h))
    return backwards[::-1]


class ControlTrunk(nn.Module):
    """GLVControl: a full copy of the SDXL encoder and middle block with its own embeddings; the 4->C hint
    conv is added once, after input block 0. Returns one feature per input block plus the middle output."""

    def __init__(self, cfg: TrunkConfig, ops=nn, attention: Attention = sdpa_attention, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.model_channels = mc
        self.time_embed = nn.Sequential(ops.Linear(mc, ted, **kw), nn.SiLU(), ops.Linear(ted, ted, **kw))
        self.label_emb = nn.Sequential(nn.Sequential(ops.Linear(cfg.adm_in_channels, ted, **kw), nn.SiLU(),
                                                     ops.Linear(ted, ted, **kw)))
        self.input_hint_block = TimestepSequential(ops.Conv2d(cfg.hint_channels, mc, 3, padding=1, **kw))
        blocks, ch = [TimestepSequential(ops.Conv2d(cfg.in_channels, mc, 3, padding=1, **kw))], mc
        for spec in cfg.blocks:
            if spec is None:
                blocks.append(TimestepSequential(Downsample(ch, ops, **kw)))
                continue
            out, depth = spec
            layers = [ResBlock(ch, ted, out, ops, **kw)]
            if depth:
                layers.append(SpatialTransformer(out, depth, cfg.context_dim, ops, attention, **kw))
            blocks.append(TimestepSequential(*layers))
            ch = out
        self.input_blocks = nn.ModuleList(blocks)
        middle = [ResBlock(ch, ted, ch, ops, **kw)]
        if cfg.middle_depth:
            middle.append(SpatialTransformer(ch, cfg.middle_depth, cfg.context_dim, ops, attention, **kw))
        self.middle_block = TimestepSequential(*middle, ResBlock(ch, ted, ch, ops, **kw))

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor) -> list[torch.Tensor]:
        """x: c_in-scaled noisy latent [B,4,H,W]; hint: scaled LQ latent [B,4,H,W]; timesteps: [B];
        context: [B,N,ctx]; y: [B,adm]. Returns ``len(input_blocks) + 1`` features."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        emb = emb + self.label_emb(y)
        guided_hint = self.input_hint_block(hint, emb, context)
        feats, h = [], x
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided_hint
            feats.append(h)
        feats.append(self.middle_block(h, emb, context))
        return feats


class ZeroSFT(nn.Module):
    """Replaces the decoder's skip concatenation: ``[main, skip + zero_conv(c)]`` group-normalised and
    modulated by spatial ``(1 + gamma, beta)`` from the control, then lerped with the plain ``[main, skip]``
    by ``control_scale``. With ``main=None`` (after the middle block) only the skip tensor is modulated."""

    def __init__(self, spec: SFTSpec, ops=nn, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        width = spec.skip_channels + spec.main_channels
        self.param_free_norm = ops.GroupNorm(32, width, **kw)
        self.mlp_shared = nn.Sequential(ops.Conv2d(spec.control_channels, spec.hidden_channels, 3, padding=1, **kw),
                                        nn.SiLU())
        self.zero_mul = ops.Conv2d(spec.hidden_channels, width, 3, padding=1, **kw)
        self.zero_add = ops.Conv2d(spec.hidden_channels, width, 3, padding=1, **kw)
        self.zero_conv = ops.Conv2d(spec.control_channels, spec.skip_channels, 1, **kw)

    def forward(self, control: torch.Tensor, skip: torch.Tensor, main: torch.Tensor | None = None,
                control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """control: [B,Cc,H,W]; skip: [B,Cs,H,W]; main: [B,Cm,H,W] or None -> [B,Cm+Cs,H,W]."""
        raw = skip if main is None else torch.cat([main, skip], dim=1)
        skip = skip + self.zero_conv(control)
        h = skip if main is None else torch.cat([main, skip], dim=1)
        actv = self.mlp_shared(control)
        h = self.param_free_norm(h) * (self.zero_mul(actv) + 1) + self.zero_add(actv)
        return h * control_scale + raw * (1 - control_scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the decoder stream (queries) to a control feature of the same size:
    ``x + control_scale * attn(norm1(x), norm2(control))``."""

    def __init__(self, spec: CrossAttnSpec, ops=nn, attention: Attention = sdpa_attention, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        q = spec.query_channels
        heads = head_count(q)
        self.attn = CrossAttention(q, spec.control_channels, heads, q // heads, ops, attention, **kw)
        self.norm1 = ops.GroupNorm(32, q, **kw)
        self.norm2 = ops.GroupNorm(32, spec.control_channels, **kw)

    def forward(self, control: torch.Tensor, x: torch.Tensor, control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """control: [B,Cc,H,W]; x: [B,Cq,H,W] -> [B,Cq,H,W]."""
        b, c, h, w = x.shape
        q = self.norm1(x).flatten(2).transpose(1, 2)
        ctx = self.norm2(control).flatten(2).transpose(1, 2)
        out = self.attn(q, ctx).transpose(1, 2).reshape(b, c, h, w)
        return x + out * control_scale


class SUPIRControl(nn.Module):
    """Everything SUPIR adds to the SDXL UNet: ``control_model`` (trunk) and ``project_modules`` (adaptors)."""

    def __init__(self, trunk: TrunkConfig, adaptors: list, ops=nn, attention: Attention = sdpa_attention,
                 dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.trunk_config = trunk
        self.adaptor_specs = list(adaptors)
        self.control_model = ControlTrunk(trunk, ops, attention, **kw)
        self.project_modules = nn.ModuleList(
            ZeroSFT(s, ops, **kw) if isinstance(s, SFTSpec) else ZeroCrossAttn(s, ops, attention, **kw) for s in adaptors)

    @classmethod
    def from_state_dict_shapes(cls, sd: dict, ops=nn, attention: Attention = sdpa_attention, dtype=None,
                               device=None) -> "SUPIRControl":
        """Build (without loading) the network whose layout ``sd`` (keys ``control_model.*``, ``project_modules.*``) has."""
        trunk = TrunkConfig.from_state_dict(_strip(sd, "control_model."))
        adaptors = adaptor_specs(_strip(sd, "project_modules."))
        return cls(trunk, adaptors, ops, attention, dtype, device)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
