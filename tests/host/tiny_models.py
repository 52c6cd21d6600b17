"""Tiny SDXL-layout models for host tests: the real SDXL block structure (9 input / 9 output blocks, Upsample in
output blocks 2 and 5, linear transformers, context 2048, adm 2816) at 32 base channels, with seeded weights."""
import logging
import math

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.sd2_clip

TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 32,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 1, 1, 1, 1],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 2048, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

TINY_VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}

SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth": [1, 1, 1, 1, 1, 1],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


# as comfy.model_detection's SD21: transformer_depth_output is read from its end, so the trailing zeros are output
# blocks 0-2 (1/8 resolution, no attention)
TINY_SD21_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 1024, "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

_CLIP_COMMON = {"attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 49407,
                "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64, "layer_norm_eps": 1e-5,
                "max_position_embeddings": 77, "model_type": "clip_text_model", "num_hidden_layers": 3,
                "pad_token_id": 1, "vocab_size": 49408}
TINY_CLIP_L = {**_CLIP_COMMON, "hidden_act": "quick_gelu", "hidden_size": 768, "num_attention_heads": 12,
               "projection_dim": 768}
TINY_CLIP_G = {**_CLIP_COMMON, "hidden_act": "gelu", "hidden_size": 1280, "num_attention_heads": 20,
               "projection_dim": 1280}


class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
    """SDXL's two text encoders (output widths 768 + 1280, pooled 1280) with 3 layers (the penultimate is read) and a 64-wide MLP."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        self.clip_l = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
            textmodel_json_config=TINY_CLIP_L, model_options={**model_options, "model_name": "clip_l"})
        self.clip_g = comfy.sd1_clip.SDClipModel(
            layer="hidden", layer_idx=-2, device=device, dtype=dtype, textmodel_json_config=TINY_CLIP_G,
            special_tokens={"start": 49406, "end": 49407, "pad": 0}, layer_norm_hidden_state=False,
            return_projected_pooled=True, model_options={**model_options, "model_name": "clip_g"})
        self.dtypes = {dtype}


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL's model definition with the tiny UNet shape; 32-channel heads (SDXL's 64 would give 0 heads)."""
    unet_config = {"model_channels": 32, "use_linear_in_transformer": True, "context_dim": 2048,
                   "adm_in_channels": 2816, "transformer_depth": [0, 0, 1, 1, 1, 1]}

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.unet_config["num_head_channels"] = 32

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)


def tiny_clip(seed: int = 0):
    """A ComfyUI CLIP object with the real SDXL tokenizer and tiny seeded SDXL text encoders."""
    clip = comfy.sd.CLIP(TinySDXL(dict(TINY_UNET_CONFIG)).clip_target(), model_options={"dtype": torch.float32})
    seeded_init_(clip.cond_stage_model, seed)
    return clip


def seeded_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic weights of useful scale: 1/sqrt(fan_in) for matrices, 1 ± 0.1 for norm gains, small biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


def tiny_sdxl(seed: int = 0, unet_config=None, model_class=TinySDXL, storage=torch.float32):
    """A tiny SDXL MODEL; ``storage`` other than fp32 stores its weights so and computes in fp32 (ComfyUI's
    manual cast, as ``weight_dtype`` / ``--fp8_e4m3fn-unet`` set up), from the same seeded fp32 values."""
    cfg = model_class(dict(unet_config or TINY_UNET_CONFIG))
    cfg.set_inference_dtype(storage, None if storage == torch.float32 else torch.float32)
    model = cfg.get_model({})
    seeded_init_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def tiny_sd15(seed: int = 0):
    class TinySD15(comfy.supported_models.SD15):
        def __init__(self, unet_config):
            super().__init__(unet_config)
            self.unet_config["num_head_channels"] = 32
    return tiny_sdxl(seed, SD15_UNET_CONFIG, TinySD15)


TINY_CLIP_H = {**_CLIP_COMMON, "hidden_act": "gelu", "hidden_size": 1024, "num_attention_heads": 16,
               "projection_dim": 1024}


class TinySD2ClipHModel(comfy.sd1_clip.SDClipModel):
    """SD 2.x's OpenCLIP-H text encoder (width 1024, penultimate layer) with 3 layers and a 64-wide MLP."""

    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
        super().__init__(device=device, layer="hidden", layer_idx=-2, textmodel_json_config=TINY_CLIP_H, dtype=dtype,
                         special_tokens={"start": 49406, "end": 49407, "pad": 0}, return_projected_pooled=True,
                         model_options=model_options)


class TinySD2ClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_name="h",
                         clip_model=TinySD2ClipHModel, **kwargs)


class TinySD21(comfy.supported_models.SD20):
    """SD 2.x's model definition with the tiny SD 2.1 UNet shape (eps; a v-prediction variant below)."""
    unet_config = {"context_dim": 1024, "model_channels": 32, "use_linear_in_transformer": True,
                   "adm_in_channels": None, "use_temporal_attention": False}

    def __init__(self, unet_config):
        super().__init__(unet_config)
        self.unet_config["num_head_channels"] = 32

    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.EPS

    def clip_target(self, state_dict={}):
        return comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer, TinySD2ClipModel)


class TinySD21V(TinySD21):
    def model_type(self, state_dict, prefix=""):
        return comfy.model_base.ModelType.V_PREDICTION


def tiny_sd21(seed: int = 0, v_prediction: bool = False, storage=torch.float32):
    """An SD 2.1-layout UNet (four levels, linear transformers, context 1024) at 32 base channels; ``storage`` as
    for :func:`tiny_sdxl`."""
    cfg = (TinySD21V if v_prediction else TinySD21)(dict(TINY_SD21_UNET_CONFIG))
    cfg.set_inference_dtype(storage, None if storage == torch.float32 else torch.float32)
    model = cfg.get_model({})
    seeded_init_(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())


def tiny_sd21_clip(seed: int = 0):
    """A ComfyUI CLIP object with the real SD 2.x tokenizer and a tiny seeded OpenCLIP-H text encoder."""
    clip = comfy.sd.CLIP(TinySD21(dict(TINY_SD21_UNET_CONFIG)).clip_target(),
                         model_options={"dtype": torch.float32})
    seeded_init_(clip.cond_stage_model, seed)
    return clip


def tiny_vae(seed: int = 0, config=TINY_VAE_CONFIG):
    logging.disable(logging.WARNING)  # VAE(sd={}) lists every key as missing; the weights are set below
    try:
        vae = comfy.sd.VAE(sd={}, config=config, dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
    seeded_init_(vae.first_stage_model, seed)
    return vae


def full_vae(seed: int = 0):
    """The SD/SDXL VAE architecture (what a checkpoint loader builds, quant convs included) with seeded weights."""
    logging.disable(logging.WARNING)
    try:
        vae = comfy.sd.VAE(sd={"decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
                               "post_quant_conv.weight": torch.zeros(4, 4, 1, 1)}, dtype=torch.float32)
    finally:
        logging.disable(logging.NOTSET)
    seeded_init_(vae.first_stage_model, seed)
    return vae


def fake_conditioning(batch: int = 1, seed: int = 0, tokens: int = 77):
    """SDXL conditioning without a text encoder: [[context [B,77,2048], {pooled_output [B,1280], size}]]."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, 2048, generator=g),
             {"pooled_output": torch.randn(batch, 1280, generator=g), "width": 1024, "height": 1024}]]


def supir_state_dict(vae, seed: int = 1, unet_config=None, with_mask: bool = True) -> dict:
    """A SUPIR file's tensors in the official prefixed layout for an SDXL UNet of ``unet_config``; the denoise
    encoder is ``vae``'s encoder with distinct weights."""
    from supir_restore.supir.model.control import SUPIRControl, TrunkConfig, adaptors_for
    trunk = TrunkConfig.for_unet(unet_config or TINY_UNET_CONFIG)
    net = seeded_init_(SUPIRControl(trunk, adaptors_for(trunk)), seed)
    sd = {}
    for k, v in net.state_dict().items():
        sd[("model." if k.startswith("control_model.") else "model.diffusion_model.") + k] = v.clone()
    if with_mask:
        sd["model.control_model.mask_LQ"] = torch.zeros(1, 4, 64, 64)
    g = torch.Generator().manual_seed(seed + 100)
    for k, v in vae.first_stage_model.encoder.state_dict().items():
        sd["first_stage_model.denoise_encoder." + k] = v.float() + 0.05 * torch.randn(v.shape, generator=g)
    return sd
