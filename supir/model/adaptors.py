"""Where SUPIR's adaptors go on an SDXL UNet: the UNet's shape read from its modules, and the plan that maps
every ZeroSFT / ZeroCrossAttn onto an output block with every width checked. Plain torch; the patch that runs
the plan is ``host/unet_patch.py``."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .control import CrossAttnSpec, SFTSpec, SUPIRControl


class SUPIRMismatchError(ValueError):
    """The SUPIR file does not fit the MODEL it is applied to."""


@dataclass(frozen=True)
class OutputBlock:
    """One UNet output block as the plan sees it: input width (main + skip), output width, and whether it ends
    with an Upsample (where a ZeroCrossAttn runs)."""
    in_channels: int
    out_channels: int
    upsamples: bool


@dataclass(frozen=True)
class Join:
    """Adaptors of one output block: ZeroSFT index, optional ZeroCrossAttn index, trunk feature index."""
    sft: int
    cross_attn: int | None
    feature: int


def plan_adaptors(unet_cfg: dict, blocks: list[OutputBlock], control: SUPIRControl,
                  name: str) -> tuple[int, dict[int, Join]]:
    """Map SUPIR's adaptors onto a UNet's output ``blocks`` in SUPIR's order (indices fall from the last
    adaptor and the last trunk feature), checking every width; ``unet_cfg`` is ``unet_config`` of that UNet.
    Returns (middle ZeroSFT index, joins by output block)."""
    specs = control.adaptor_specs
    trunk = control.trunk_config
    feature_channels = trunk.feature_channels
    supir_cfg = trunk.unet_config()
    diffs = [f"{k}: SUPIR {supir_cfg[k]} vs MODEL {unet_cfg.get(k)}" for k in supir_cfg if supir_cfg[k] != unet_cfg.get(k)]
    if diffs:
        kind = "an SD1.x/SD2.x" if unet_cfg.get("adm_in_channels") is None else "a different"
        raise SUPIRMismatchError(
            f"{name} does not fit this MODEL ({kind} UNet): " + "; ".join(diffs)
            + ". SUPIR needs an SDXL model (base, Juggernaut, Lightning…); load one with Load Checkpoint.")

    def want(index: int, kind: type, **widths):
        spec = specs[index] if 0 <= index < len(specs) else None
        got = {k: getattr(spec, k) for k in widths} if isinstance(spec, kind) else None
        if got != widths:
            raise SUPIRMismatchError(f"{name}: project_modules.{index} is {spec}, but this MODEL needs a "
                                     f"{kind.__name__} with {widths}. The SUPIR file and the UNet do not match.")

    a, feat = len(specs) - 1, len(feature_channels) - 1
    mid_width = feature_channels[-1]
    want(a, SFTSpec, control_channels=mid_width, skip_channels=mid_width, main_channels=0)
    middle, joins = a, {}
    a, feat = a - 1, feat - 1
    for i, block in enumerate(blocks):
        skip = feature_channels[feat]
        want(a, SFTSpec, control_channels=feature_channels[feat], skip_channels=skip,
             main_channels=block.in_channels - skip)
        sft, a = a, a - 1
        cross = None
        if block.upsamples:
            want(a, CrossAttnSpec, control_channels=feature_channels[feat], query_channels=block.out_channels)
            cross, a = a, a - 1
        joins[i] = Join(sft, cross, feat)
        feat -= 1
    if a != -1 or feat != -1:
        raise SUPIRMismatchError(f"{name}: {a + 1} adaptor(s) or {feat + 1} trunk feature(s) left unused; "
                                 "the SUPIR file and the UNet do not match.")
    return middle, joins


def unet_config(unet: nn.Module) -> dict:
    """Shape of a ComfyUI UNetModel (read from its attributes) in the vocabulary of ``TrunkConfig.unet_config``."""
    cfg = {"in_channels": unet.in_channels, "model_channels": unet.model_channels,
           "channel_mult": tuple(unet.channel_mult), "num_res_blocks": tuple(unet.num_res_blocks),
           "context_dim": None, "adm_in_channels": None, "transformer_depth_middle": 0}
    depths = []
    for block in unet.input_blocks[1:]:
        if len(block) and hasattr(block[0], "in_layers"):
            depths.append(len(block[1].transformer_blocks) if len(block) > 1 else 0)
    cfg["transformer_depth"] = tuple(depths)
    if unet.middle_block is not None and len(unet.middle_block) > 2:
        cfg["transformer_depth_middle"] = len(unet.middle_block[1].transformer_blocks)
    for m in unet.modules():
        if hasattr(m, "attn2"):
            cfg["context_dim"] = m.attn2.to_k.in_features
            break
    if getattr(unet, "num_classes", None) == "sequential":
        cfg["adm_in_channels"] = unet.label_emb[0][0].in_features
    return cfg


