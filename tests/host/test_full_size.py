"""Tier 2: the full-size v0 layout (meta device) against ComfyUI's full-size SDXL UNet and VAE encoder."""
import json
import os

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import torch  # noqa: E402

import comfy.supported_models  # noqa: E402
from comfy.ldm.modules.diffusionmodules.model import Encoder  # noqa: E402

from supir_restore.supir.model.checkpoint import control_layout, split_supir_state_dict  # noqa: E402
from supir_restore.supir.host.unet_patch import output_blocks  # noqa: E402
from supir_restore.supir.model.adaptors import Join, plan_adaptors, unet_config  # noqa: E402

LAYOUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "supir-v0-layout.json")
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
             "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
             "use_temporal_attention": False, "use_temporal_resblock": False}


@pytest.fixture(scope="module")
def official():
    with open(LAYOUT) as f:
        layout = json.load(f)["layout"]
    return split_supir_state_dict({k: torch.empty(v, device="meta") for k, v in layout.items()}, "SUPIR-v0Q")


def test_official_layout_maps_onto_comfyui_sdxl(official):
    cfg = comfy.supported_models.SDXL(dict(SDXL_UNET))
    cfg.set_inference_dtype(torch.float16, None)
    unet = cfg.get_model({}, device="meta").diffusion_model
    net = control_layout(official.control)
    middle, joins = plan_adaptors(unet_config(unet), output_blocks(unet), net, "SUPIR-v0Q")
    assert middle == 11
    assert joins == {0: Join(10, None, 8), 1: Join(9, None, 7), 2: Join(8, 7, 6), 3: Join(6, None, 5),
                     4: Join(5, None, 4), 5: Join(4, 3, 3), 6: Join(2, None, 2), 7: Join(1, None, 1),
                     8: Join(0, None, 0)}


def test_denoise_encoder_is_comfyui_sdxl_vae_encoder(official):
    with torch.device("meta"):
        encoder = Encoder(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                          ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in official.denoise_encoder.items()} == expected
