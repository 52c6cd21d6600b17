"""StableSR files: the SR parts of a StableSR checkpoint (``stablesr_000117.ckpt``, ``stablesr_768v_000139.ckpt``,
``stablesr_turbo.ckpt``) — the time-aware encoder (``structcond_stage_model.*``) and the SPADE layer of every
UNet ResBlock (``model.diffusion_model.<block>.spade.*``) — split, sized from their shapes and checked by name
and shape. The SD 2.x UNet, VAE and text encoder in the same file are the stock ones; ComfyUI's checkpoint
loader reads those."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import non_finite_tensors
from ..weights import check_layout, names
from .encoder import EncoderConfig, TimeAwareEncoder
from .spade import HIDDEN, SPADE

ENCODER_PREFIX = "structcond_stage_model."
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
HELP = ("StableSR files are stablesr_000117.ckpt (SD 2.1-512), stablesr_768v_000139.ckpt (SD 2.1-768-v) or "
        "stablesr_turbo.ckpt; put them in ComfyUI/models/stablesr")


class StableSRCheckpointError(ValueError):
    """A file that is not a loadable StableSR checkpoint; the message says what is wrong and what to do."""


@dataclass
class StableSRWeights:
    """The SR tensors of a StableSR file: the encoder's (keys without prefix) and the SPADE layers' (keys
    ``<block>.spade.<param>``, e.g. ``input_blocks.1.0.spade.mlp_gamma.weight``)."""
    encoder: dict[str, torch.Tensor]
    spade: dict[str, torch.Tensor]


def is_sr_key(key: str) -> bool:
    """Whether a checkpoint key is one of StableSR's own tensors (time-aware encoder or SPADE), not SD's."""
    return key.startswith(ENCODER_PREFIX) or ".spade." in key


def split_stablesr_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> StableSRWeights:
    """Pick the SR tensors out of a whole StableSR checkpoint; a file without them is an error that says what
    the file is instead."""
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in sd.items() if k.startswith(ENCODER_PREFIX)}
    spade = {}
    for key, value in sd.items():
        if ".spade." in key:
            spade[next((key[len(p):] for p in UNET_PREFIXES if key.startswith(p)), key)] = value
    if not encoder and not spade:
        raise StableSRCheckpointError(f"{name}: {_what_it_is(sd)} {HELP}")
    if not encoder or not spade:
        missing = "time-aware encoder (structcond_stage_model.*)" if not encoder else "SPADE layers (*.spade.*)"
        raise StableSRCheckpointError(f"{name}: the {missing} is missing; this file is incomplete. Use a full "
                                      f"StableSR checkpoint.")
    return StableSRWeights(encoder, spade)


def _what_it_is(sd: dict) -> str:
    keys = list(sd)
    if any("control_model." in k or "project_modules." in k for k in keys):
        return "this is a SUPIR file, not StableSR; load it with SUPIR Load Model."
    if any(k.startswith("decoder.fusion_layer_") for k in keys):
        return "this is StableSR's CFW decoder file; load it with StableSR Load CFW."
    if any(k.startswith(UNET_PREFIXES) for k in keys):
        return ("this is a Stable Diffusion checkpoint without StableSR's tensors (no time-aware encoder, no "
                "SPADE layers): load it with Load Checkpoint, and the StableSR file here.")
    return f"not a StableSR file: no structcond_stage_model or SPADE tensors among {len(keys)}."


def spade_widths(spade: dict[str, torch.Tensor]) -> dict[str, int]:
    """ResBlock path -> its output width, from the SPADE norms' shapes, in the file's order."""
    suffix = ".spade.param_free_norm.weight"
    return {k[:-len(suffix)]: v.shape[0] for k, v in spade.items() if k.endswith(suffix)}


def sd_resblock_widths(model_channels: int, channel_mult: tuple[int, ...], num_res_blocks: int) -> dict[str, int]:
    """Every ResBlock of an SD 1.x/2.x UNet (path -> output width), where StableSR puts a SPADE layer: the
    input blocks' ResBlocks, the middle block's two, and every output block's."""
    widths, index = {}, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            widths[f"input_blocks.{index}.0"] = mult * model_channels
            index += 1
        index += level != len(channel_mult) - 1
    widths["middle_block.0"] = widths["middle_block.2"] = channel_mult[-1] * model_channels
    index = 0
    for mult in reversed(channel_mult):
        for _ in range(num_res_blocks + 1):
            widths[f"output_blocks.{index}.0"] = mult * model_channels
            index += 1
    return widths


class SPADELayers(nn.Module):
    """The SPADE layers of a UNet's ResBlocks, registered under their blocks' paths so the state dict keys are the
    file's (``input_blocks.1.0.spade.*``)."""

    def __init__(self, widths: dict[str, int], feature_channels: int, hidden: int = HIDDEN, ops=nn, dtype=None,
                 device=None):
        super().__init__()
        self.paths = list(widths)
        for path, width in widths.items():
            parent = self
            for part in path.split("."):
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module("spade", SPADE(width, feature_channels, hidden, ops=ops, dtype=dtype, device=device))

    def layer(self, path: str) -> SPADE:
        return self.get_submodule(f"{path}.spade")


def encoder_layout(encoder: dict[str, torch.Tensor], name: str = "checkpoint") -> TimeAwareEncoder:
    """The time-aware encoder these tensors fit (on the meta device), checked tensor by tensor."""
    try:
        config = EncoderConfig.from_shapes({k: tuple(v.shape) for k, v in encoder.items()})
    except (KeyError, ValueError, ZeroDivisionError) as e:
        raise StableSRCheckpointError(f"{name}: the time-aware encoder's tensors do not form an encoder "
                                      f"({type(e).__name__}: {e}). {HELP}") from e
    net = TimeAwareEncoder(config, device="meta")
    check_layout({k: v.shape for k, v in net.state_dict().items()}, {k: v.shape for k, v in encoder.items()},
                 "time-aware encoder", name)
    return net


def spade_layout(spade: dict[str, torch.Tensor], name: str = "checkpoint") -> SPADELayers:
    """The SPADE layers these tensors fit (on the meta device), checked tensor by tensor."""
    widths = spade_widths(spade)
    first = next(iter(widths), None)
    if first is None:
        raise StableSRCheckpointError(f"{name}: no SPADE norm (*.spade.param_free_norm.weight) found. {HELP}")
    shared = spade[f"{first}.spade.mlp_shared.0.weight"].shape
    layers = SPADELayers(widths, feature_channels=shared[1], hidden=shared[0], device="meta")
    check_layout({k: v.shape for k, v in layers.state_dict().items()}, {k: v.shape for k, v in spade.items()},
                 "SPADE layers", name)
    return layers


def check_stablesr_weights(weights: StableSRWeights, name: str) -> tuple[TimeAwareEncoder, SPADELayers]:
    """Every SR tensor finite and fitting the encoder and SPADE layers its shapes describe (on the meta device)."""
    if bad := non_finite_tensors({**weights.encoder, **weights.spade}):
        raise StableSRCheckpointError(f"{name}: {len(bad)} tensor(s) hold NaN or infinite values ({names(bad, 4)}); "
                                      f"the file is damaged and would turn every restoration black. Download it "
                                      f"again.")
    return encoder_layout(weights.encoder, name), spade_layout(weights.spade, name)
