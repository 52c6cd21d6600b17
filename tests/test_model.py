"""Tier 1: SUPIR's network, its equations and its shape-derived configuration (no host needed)."""
import pytest
import torch
import torch.nn.functional as F

from supir_restore.supir.model.adaptors import Join, OutputBlock, SUPIRMismatchError, plan_adaptors
from supir_restore.supir.model.checkpoint import control_layout, split_supir_state_dict, vae_encoder_layout
from supir_restore.supir.model.control import (CrossAttnSpec, SFTSpec, SUPIRControl, TrunkConfig, ZeroCrossAttn, ZeroSFT,
                                       adaptor_specs, adaptors_for)

from helpers import TINY_UNET, assert_close_relative, full_layout, relative_error, seeded, tiny_control

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def randomised(module, seed=0):
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(seeded(p.shape, seed + i))
    return module


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_sft_equation(dtype):
    sft = randomised(ZeroSFT(SFTSpec(control_channels=32, skip_channels=32, main_channels=64))).to(dtype)
    c, skip, main = (seeded((2, n, 6, 5), s, 1.0).to(dtype) for s, n in ((1, 32), (2, 32), (3, 64)))
    actv = F.silu(sft.mlp_shared[0](c))
    h = torch.cat([main, skip + sft.zero_conv(c)], 1)
    modulated = F.group_norm(h, 32, sft.param_free_norm.weight, sft.param_free_norm.bias, 1e-5) \
        * (1 + sft.zero_mul(actv)) + sft.zero_add(actv)
    raw = torch.cat([main, skip], 1)
    # the same ops composed by hand: rounding of the dtype (bfloat16 keeps 8 bits: 2^-8 per op, a few ops deep)
    rtol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert_close_relative(sft(c, skip, main, 0.7), 0.7 * modulated + 0.3 * raw, rtol)
    assert torch.equal(sft(c, skip, main, 0.0), raw)  # control_scale 0 is the plain concatenation
    assert_close_relative(sft(c, skip, main, 1.0), modulated, rtol)


def test_zero_sft_middle_block_has_no_concat():
    sft = randomised(ZeroSFT(SFTSpec(64, 64, 0)))
    c, h = seeded((1, 64, 4, 4), 1, 1.0), seeded((1, 64, 4, 4), 2, 1.0)
    assert torch.equal(sft(c, h, None, 0.0), h)
    actv = F.silu(sft.mlp_shared[0](c))
    expected = F.group_norm(h + sft.zero_conv(c), 32, sft.param_free_norm.weight, sft.param_free_norm.bias) \
        * (1 + sft.zero_mul(actv)) + sft.zero_add(actv)
    assert_close_relative(sft(c, h, None, 1.0), expected, 1e-5)  # the same float32 ops composed by hand


def test_zero_sft_with_zero_convs_still_normalises():
    sft = randomised(ZeroSFT(SFTSpec(32, 32, 32)))
    for conv in (sft.zero_mul, sft.zero_add, sft.zero_conv):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    c, skip, main = (seeded((1, 32, 4, 4), s, 3.0) for s in (1, 2, 3))
    h = torch.cat([main, skip], 1)
    expected = F.group_norm(h, 32, sft.param_free_norm.weight, sft.param_free_norm.bias)
    assert_close_relative(sft(c, skip, main, 1.0), expected, 1e-5)  # as above


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_cross_attn_equation(dtype):
    xa = randomised(ZeroCrossAttn(CrossAttnSpec(control_channels=64, query_channels=128))).to(dtype)
    c, x = seeded((2, 64, 3, 4), 1, 1.0).to(dtype), seeded((2, 128, 3, 4), 2, 1.0).to(dtype)
    q = F.group_norm(x, 32, xa.norm1.weight, xa.norm1.bias).flatten(2).transpose(1, 2)
    k = F.group_norm(c, 32, xa.norm2.weight, xa.norm2.bias).flatten(2).transpose(1, 2)
    heads, d = 2, 64  # SDXL's 64-channel heads
    Q, K, V = xa.attn.to_q(q), xa.attn.to_k(k), xa.attn.to_v(k)
    split = lambda t: t.view(2, -1, heads, d).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(Q) @ split(K).transpose(-1, -2) / d ** 0.5, -1)
    attn = xa.attn.to_out[0]((w @ split(V)).transpose(1, 2).reshape(2, 12, 128))
    expected = x + 0.5 * attn.transpose(1, 2).reshape(2, 128, 3, 4)
    assert_close_relative(xa(c, x, 0.5), expected, 1e-5)  # attention by hand vs its kernel
    assert torch.equal(xa(c, x, 0.0), x)


def test_trunk_returns_one_feature_per_block_and_adds_the_hint_once():
    net = tiny_control()
    trunk = net.control_model
    x, hint = seeded((2, 4, 16, 16), 1, 1.0), seeded((2, 4, 16, 16), 2, 1.0)
    t, ctx, y = torch.tensor([999.0, 10.0]), seeded((2, 5, 64), 3, 1.0), seeded((2, 48), 4, 1.0)
    feats = trunk(x, hint, t, ctx, y)
    assert [f.shape[1] for f in feats] == [32, 32, 32, 32, 64, 64, 64, 128, 128, 128]
    assert [f.shape[-1] for f in feats] == [16, 16, 16, 8, 8, 8, 4, 4, 4, 4]
    without = trunk(x, torch.zeros_like(hint), t, ctx, y)
    hint_conv = trunk.input_hint_block[0]
    # float32 rounding of the first block's sums, which also hold the hint-free part
    assert_close_relative(feats[0] - without[0], hint_conv(hint) - hint_conv(torch.zeros_like(hint)), 1e-4)
    assert relative_error(feats[5], without[5]) > 1e-3


def test_configs_are_derived_from_shapes():
    net = tiny_control()
    sd = net.state_dict()
    trunk = TrunkConfig.from_state_dict({k[14:]: v for k, v in sd.items() if k.startswith("control_model.")})
    assert trunk == net.trunk_config
    assert trunk.unet_config() == {**TINY_UNET, "channel_mult": (1, 2, 4), "num_res_blocks": (2, 2, 2),
                                   "transformer_depth": (0, 0, 1, 1, 1, 1)}
    specs = adaptor_specs({k[16:]: v for k, v in sd.items() if k.startswith("project_modules.")})
    assert specs == adaptors_for(trunk) == net.adaptor_specs
    assert [type(s).__name__ for s in specs].count("CrossAttnSpec") == 2
    assert isinstance(specs[3], CrossAttnSpec) and isinstance(specs[7], CrossAttnSpec)
    rebuilt = SUPIRControl.from_state_dict_shapes(sd, device="meta")
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sd.items()}


def test_full_size_layout_matches_official_files():
    """The full v0 network built on the meta device has exactly the official keys and shapes."""
    data = full_layout()
    layout = data["layout"]
    sd = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    weights = split_supir_state_dict(sd, "SUPIR-v0Q layout")
    net = control_layout(weights.control)  # raises on any missing, extra or mis-shaped tensor
    built = net.state_dict()
    assert sum(k.startswith("control_model.") for k in built) == data["tensor_counts"]["model.control_model."] - 1
    assert sum(k.startswith("project_modules.") for k in built) == data["tensor_counts"]["model.diffusion_model.project_modules."]
    assert sum(v.numel() for k, v in built.items() if k.startswith("control_model.")) == \
        data["parameter_counts"]["model.control_model."]
    assert sum(v.numel() for k, v in built.items() if k.startswith("project_modules.")) == \
        data["parameter_counts"]["model.diffusion_model.project_modules."]
    encoder = vae_encoder_layout(weights.denoise_encoder)
    assert len(encoder) == data["tensor_counts"]["first_stage_model.denoise_encoder."] == 106
    assert {k: tuple(v.shape) for k, v in weights.denoise_encoder.items()} == encoder
    cfg = net.trunk_config
    assert cfg.unet_config() == {"in_channels": 4, "model_channels": 320, "channel_mult": (1, 2, 4),
                                 "num_res_blocks": (2, 2, 2), "transformer_depth": (0, 0, 2, 2, 10, 10),
                                 "transformer_depth_middle": 10, "context_dim": 2048, "adm_in_channels": 2816}
    assert adaptors_for(cfg) == net.adaptor_specs
    assert TrunkConfig.for_unet(cfg.unet_config()) == cfg
    widths = [(s.control_channels, s.skip_channels, s.main_channels) if isinstance(s, SFTSpec)
              else (s.control_channels, s.query_channels) for s in net.adaptor_specs]
    assert widths == [(320, 320, 320), (320, 320, 320), (320, 320, 640), (320, 640), (320, 320, 640),
                      (640, 640, 640), (640, 640, 1280), (640, 1280), (640, 640, 1280), (1280, 1280, 1280),
                      (1280, 1280, 1280), (1280, 1280, 0)]


# SDXL's nine output blocks: (main + skip width, output width, ends with an Upsample)
SDXL_OUTPUT_BLOCKS = [OutputBlock(2560, 1280, False), OutputBlock(2560, 1280, False), OutputBlock(1920, 1280, True),
                      OutputBlock(1920, 640, False), OutputBlock(1280, 640, False), OutputBlock(960, 640, True),
                      OutputBlock(960, 320, False), OutputBlock(640, 320, False), OutputBlock(640, 320, False)]


def test_official_adaptors_map_onto_sdxl_output_blocks():
    net = control_layout(split_supir_state_dict({k: torch.empty(v, device="meta")
                                                 for k, v in full_layout()["layout"].items()}).control)
    middle, joins = plan_adaptors(net.trunk_config.unet_config(), SDXL_OUTPUT_BLOCKS, net, "SUPIR-v0Q")
    assert middle == 11
    assert joins == {0: Join(10, None, 8), 1: Join(9, None, 7), 2: Join(8, 7, 6), 3: Join(6, None, 5),
                     4: Join(5, None, 4), 5: Join(4, 3, 3), 6: Join(2, None, 2), 7: Join(1, None, 1),
                     8: Join(0, None, 0)}
    sd15 = {**net.trunk_config.unet_config(), "context_dim": 768, "adm_in_channels": None}
    with pytest.raises(SUPIRMismatchError, match="an SD1.x/SD2.x UNet.*context_dim: SUPIR 2048 vs MODEL 768"):
        plan_adaptors(sd15, SDXL_OUTPUT_BLOCKS, net, "SUPIR-v0Q")
    wrong_width = [*SDXL_OUTPUT_BLOCKS[:2], OutputBlock(1920, 1280, False), *SDXL_OUTPUT_BLOCKS[3:]]
    with pytest.raises(SUPIRMismatchError, match="project_modules.7 is CrossAttnSpec.*needs a SFTSpec"):
        plan_adaptors(net.trunk_config.unet_config(), wrong_width, net, "SUPIR-v0Q")
