"""Host-free builders shared by tier-1 tests: tiny SUPIR networks and state dicts in the official layouts."""
import json
import math
import os

import torch

from supir_restore.supir.model.checkpoint import vae_encoder_shapes
from supir_restore.supir.model.control import SUPIRControl, TrunkConfig, adaptors_for

LAYOUT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "supir-v0-layout.json")

TINY_UNET = {"in_channels": 4, "model_channels": 32, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
             "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_middle": 1, "context_dim": 64,
             "adm_in_channels": 48}


def seeded(shape, seed, scale=None):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    return t / math.sqrt(math.prod(shape[1:])) if scale is None and len(shape) > 1 else t * (scale or 0.1)


def tiny_control(seed=0) -> SUPIRControl:
    trunk = TrunkConfig.for_unet(TINY_UNET)
    net = SUPIRControl(trunk, adaptors_for(trunk))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(seeded(p.shape, seed * 1000 + i))
    return net


def tiny_encoder_sd(seed=0) -> dict:
    shapes = vae_encoder_shapes(ch=32, in_ch=3, out_ch=8, widths=[32, 32], n_res=1)
    return {k: seeded(s, seed + i) for i, (k, s) in enumerate(shapes.items())}


def official_state_dict(seed=0, mask=True) -> dict:
    """Keys as in SUPIR-v0Q.ckpt: model.control_model.*, model.diffusion_model.project_modules.*,
    first_stage_model.denoise_encoder.* (and mask_LQ)."""
    sd = {}
    for k, v in tiny_control(seed).state_dict().items():
        sd[("model." if k.startswith("control_model.") else "model.diffusion_model.") + k] = v
    sd.update({"first_stage_model.denoise_encoder." + k: v for k, v in tiny_encoder_sd(seed).items()})
    if mask:
        sd["model.control_model.mask_LQ"] = torch.zeros(1, 4, 64, 64)
    return sd


def full_layout() -> dict:
    with open(LAYOUT_JSON) as f:
        return json.load(f)
