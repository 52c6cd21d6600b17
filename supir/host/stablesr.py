"""StableSR on ComfyUI's own SD 2.x UNet, as patches on a cloned ModelPatcher.

- A keyed DIFFUSION_MODEL wrapper runs the time-aware encoder once per UNet call, on the clean LR latent (batched
  like the call, sliced per tile under tiled aggregation) and the call's original-scale timestep, and makes its
  features visible to the SPADE slots for the length of that call. A sampler may set the timestep both see (the
  official DDIM's pairing) under ``TIMESTEP_KEY`` in the transformer options.
- An object patch gives every ResBlock's ``out_layers`` a parameter-free slot after its last layer, where the
  block's SPADE layer modulates the residual branch: ``h = SPADE(out_layers(h), f)`` before ``skip(x) + h``, as
  StableSR's ``ResBlockDual`` does. Weight keys are unchanged, and without the wrapper's features (a clone
  without StableSR that shares the slotted module) the slot is the identity.
"""
from __future__ import annotations

import contextvars
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

import comfy.patcher_extension

from ..stablesr.checkpoint import (SPADELayers, check_stablesr_weights, is_sr_key, spade_widths,
                                   split_stablesr_state_dict)
from ..stablesr.encoder import TimeAwareEncoder
from ..stablesr.sampling import TIMESTEP_KEY
from ..weights import STORAGE_DTYPES, read_state_dict
from .supir_loader import managed_network
from .tiled_aggregation import TILES_KEY, batched_like_call

STABLESR_PATCH_KEY = "stablesr"
_CALL = contextvars.ContextVar("stablesr_call", default=None)  # (features by size, SPADE layers, dtype)


class StableSRMismatchError(ValueError):
    """The StableSR file does not fit the MODEL or the latent it is used with."""


class StableSRNet(nn.Module):
    def __init__(self, encoder: TimeAwareEncoder, spade: SPADELayers):
        super().__init__()
        self.encoder = encoder
        self.spade = spade


@dataclass
class StableSRModel:
    """A loaded StableSR file: the time-aware encoder and SPADE layers, managed by ComfyUI."""
    patcher: object
    compute_dtype: torch.dtype
    name: str

    @property
    def net(self) -> StableSRNet:
        return self.patcher.model


def load_stablesr(path: str, weight_dtype: str = "auto") -> StableSRModel:
    """Load and validate the SR parts of a StableSR checkpoint (every tensor checked by name and shape, sizes
    derived from the shapes); ``weight_dtype`` as for SUPIR files."""
    return stablesr_from_state_dict(read_state_dict(path, STORAGE_DTYPES.get(weight_dtype), is_sr_key),
                                    os.path.basename(path), weight_dtype)


def stablesr_from_state_dict(sd: dict[str, torch.Tensor], name: str, weight_dtype: str = "auto") -> StableSRModel:
    """:func:`load_stablesr` on a checkpoint's tensors already read (``name`` for messages)."""
    weights = split_stablesr_state_dict(sd, name)
    encoder, spade = check_stablesr_weights(weights, name)
    shared = weights.spade[f"{spade.paths[0]}.spade.mlp_shared.0.weight"].shape

    def build(**kw) -> StableSRNet:
        return StableSRNet(TimeAwareEncoder(encoder.config, **kw),
                           SPADELayers(spade_widths(weights.spade), shared[1], shared[0], **kw))
    tensors = {**{f"encoder.{k}": v for k, v in weights.encoder.items()},
               **{f"spade.{k}": v for k, v in weights.spade.items()}}
    patcher, compute_dtype = managed_network(build, tensors, weight_dtype)
    return StableSRModel(patcher, compute_dtype, name)


class SPADESlot(nn.Module):
    """Where a ResBlock's SPADE layer runs: the last layer of its ``out_layers``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        call = _CALL.get()
        if call is None:
            return h
        features, spade, dtype = call
        feature = features.get(tuple(h.shape[-2:]))
        if feature is None:
            raise StableSRMismatchError(f"no time-aware encoder feature at {h.shape[-1]}x{h.shape[-2]} latent "
                                        f"pixels for {self.path}; StableSR needs an SD 2.x UNet with four levels")
        return spade.layer(self.path)(h.to(dtype), feature).to(h.dtype)


class StableSRPatch:
    """The per-MODEL StableSR state; deep copies (ModelPatcher.clone) return the same object."""

    def __init__(self, sr: StableSRModel, lr_latent: torch.Tensor):
        self.sr = sr
        self.lr_latent = lr_latent

    def __deepcopy__(self, memo):
        return self

    def diffusion_model_wrapper(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        size = (transformer_options.get(TILES_KEY) or (tuple(x.shape[-2:]), None))[0]
        if tuple(self.lr_latent.shape[-2:]) != tuple(size):
            raise StableSRMismatchError(
                f"the latent being sampled is {size[1] * 8}x{size[0] * 8} px but the LR latent given to Apply "
                f"StableSR is {self.lr_latent.shape[-1] * 8}x{self.lr_latent.shape[-2] * 8} px; sample a latent of "
                f"the upscaled LR image's size.")
        if (timestep := transformer_options.get(TIMESTEP_KEY)) is not None:
            timesteps = torch.full_like(timesteps, timestep)  # the official DDIM's model timestep for this step
        dtype = self.sr.compute_dtype
        with torch.no_grad():
            features = self.sr.net.encoder(batched_like_call(self.lr_latent, x, transformer_options).to(dtype),
                                           timesteps)
        token = _CALL.set((features, self.sr.net.spade, dtype))
        try:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        finally:
            _CALL.reset(token)


def check_fits(model, sr: StableSRModel) -> None:
    """StableSR's SPADE layers fit an SD 2.x UNet: context 1024 and a ResBlock of each layer's width."""
    context_dim = model.model.model_config.unet_config.get("context_dim")
    if context_dim != 1024:
        raise StableSRMismatchError(
            f"{sr.name} is made for Stable Diffusion 2.x (text context 1024), but this MODEL's context is "
            f"{context_dim} (SD 1.x: 768, SDXL: 2048). Load the SD 2.1 checkpoint StableSR was trained on "
            f"(v2-1_512-ema-pruned for stablesr_000117, v2-1_768-ema-pruned for the 768v file, sd_turbo for Turbo).")
    for path in sr.net.spade.paths:
        try:
            width = model.get_model_object(f"diffusion_model.{path}").out_channels
        except AttributeError:
            width = None
        expected = sr.net.spade.layer(path).param_free_norm.num_channels
        if width != expected:
            raise StableSRMismatchError(f"{sr.name}: this MODEL has no {expected}-channel ResBlock at {path} "
                                        f"(found {width}); the StableSR file and the UNet do not match.")


def apply_stablesr(model, sr: StableSRModel, lr_latent: torch.Tensor):
    """A clone of ``model`` (an SD 2.x ModelPatcher) restoring toward ``lr_latent`` (raw LATENT samples of the
    upscaled LR image, [B,4,H/8,W/8]); the encoder and SPADE layers load and offload together with the UNet."""
    if STABLESR_PATCH_KEY in model.additional_models:
        raise StableSRMismatchError("this MODEL already has StableSR applied; connect Apply StableSR to the model "
                                    "from the checkpoint loader, not to another Apply StableSR.")
    check_fits(model, sr)
    latent = model.get_model_object("latent_format").process_in(lr_latent.float())
    patch = StableSRPatch(sr, latent.cpu())
    m = model.clone()
    m.set_additional_models(STABLESR_PATCH_KEY, [sr.patcher.clone()])
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, STABLESR_PATCH_KEY,
                           patch.diffusion_model_wrapper)
    for path in sr.net.spade.paths:
        name = f"diffusion_model.{path}.out_layers"
        layers = [layer for layer in m.get_model_object(name) if not isinstance(layer, SPADESlot)]
        m.add_object_patch(name, nn.Sequential(OrderedDict(
            [*((str(i), layer) for i, layer in enumerate(layers)), ("spade", SPADESlot(path))])))
    return m
