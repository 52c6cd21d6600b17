"""Tier 1: StableSR's parts in plain torch: the full-size layout of the official files on the meta device, the
SPADE and attention equations on hand-made tensors, the encoder's features, and the respaced schedule."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_close_relative, relative_error
from supir_restore.supir.weights import WeightsFileError
from supir_restore.supir.stablesr.checkpoint import (SPADELayers, StableSRCheckpointError, encoder_layout,
                                                     sd_resblock_widths, spade_layout, spade_widths,
                                                     split_stablesr_state_dict)
from supir_restore.supir.stablesr.cfw import (CFWFusion, CFWLayers, ResidualDenseBlock, check_fusion_fits,
                                              fusion_layout, split_cfw_state_dict, vae_config)
from supir_restore.supir.stablesr.encoder import AttentionBlock, EncoderConfig, TimeAwareEncoder, parameter_count
from supir_restore.supir.sampling.samplers import ddpm_sigmas
from supir_restore.supir.stablesr.sampling import TIMESTEP_KEY, sample_stablesr_ddim
from supir_restore.supir.stablesr.schedule import ddim_alpha_timesteps, respaced_timesteps, schedule_sigmas
from supir_restore.supir.stablesr.spade import SPADE

LAYOUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stablesr-layout.json")
SD21 = dict(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2)


@pytest.fixture(scope="module")
def official():
    """The SR tensors of stablesr_000117.ckpt, as meta tensors with the official names and shapes."""
    with open(LAYOUT) as f:
        data = json.load(f)
    groups = data["stablesr_ckpt"]
    sd = {k: torch.empty(v, device="meta") for group in ("unet_spade_only", "structcond_stage_model")
          for k, v in groups[group].items()}
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.empty(320, 4, 3, 3, device="meta")  # stock UNet
    return data, split_stablesr_state_dict(sd, "stablesr_000117.ckpt")


def test_official_layout_builds_with_nothing_missing_and_the_official_parameter_counts(official):
    data, weights = official
    assert len(weights.encoder) == 200 and len(weights.spade) == 176
    encoder = encoder_layout(weights.encoder, "stablesr_000117.ckpt")  # raises on any missing or mis-shaped tensor
    assert encoder.config == EncoderConfig()  # every size derived from the shapes equals the official config
    assert parameter_count(encoder) == data["params"]["structcond"] == 52_494_080
    spade = spade_layout(weights.spade, "stablesr_000117.ckpt")
    assert parameter_count(spade) == data["params"]["spade"] == 53_020_160
    assert spade_widths(weights.spade) == sd_resblock_widths(**SD21)  # a SPADE in each of SD 2.1's 22 ResBlocks
    assert len(spade.paths) == 22


def test_the_resblocks_of_sd21_and_their_widths():
    widths = sd_resblock_widths(**SD21)
    assert [k for k in widths if k.startswith("input_blocks")] == [f"input_blocks.{i}.0" for i in (1, 2, 4, 5, 7, 8,
                                                                                                    10, 11)]
    assert [widths[f"output_blocks.{i}.0"] for i in range(12)] == [1280] * 6 + [640] * 3 + [320] * 3
    assert widths["middle_block.0"] == widths["middle_block.2"] == 1280


def test_files_without_stablesr_tensors_are_named_for_what_they_are():
    unet_only = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}
    with pytest.raises(StableSRCheckpointError, match="Stable Diffusion checkpoint without StableSR's tensors"):
        split_stablesr_state_dict(unet_only, "sd21.ckpt")
    with pytest.raises(StableSRCheckpointError, match="SUPIR file"):
        split_stablesr_state_dict({"model.control_model.input_hint_block.0.weight": torch.zeros(1)}, "supir.ckpt")
    with pytest.raises(StableSRCheckpointError, match="SPADE layers .* is missing"):
        split_stablesr_state_dict({"structcond_stage_model.time_embed.0.weight": torch.zeros(1)}, "half.ckpt")
    with pytest.raises(StableSRCheckpointError, match="CFW decoder file; load it with StableSR Load CFW"):
        split_stablesr_state_dict({"decoder.fusion_layer_1.encode_enc_1.conv1.weight": torch.zeros(1)}, "cfw.ckpt")


def test_a_mis_shaped_tensor_is_named(official):
    _, weights = official
    spade = dict(weights.spade)
    spade["output_blocks.3.0.spade.mlp_beta.bias"] = torch.empty(640, device="meta")
    with pytest.raises(WeightsFileError, match=r"output_blocks.3.0.spade.mlp_beta.bias \[640\]"):
        spade_layout(spade, "broken.ckpt")


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(max(1, p[0].numel())) if p.ndim > 1 else 0.2))
    return module


def test_spade_equation():
    spade = seeded(SPADE(64, 16, hidden=8))
    h, f = torch.randn(2, 64, 6, 5), torch.randn(2, 16, 6, 5)
    n = F.group_norm(h, 32, spade.param_free_norm.weight, spade.param_free_norm.bias, eps=1e-5)
    a = F.relu(F.conv2d(f, spade.mlp_shared[0].weight, spade.mlp_shared[0].bias, padding=1))
    gamma = F.conv2d(a, spade.mlp_gamma.weight, spade.mlp_gamma.bias, padding=1)
    beta = F.conv2d(a, spade.mlp_beta.weight, spade.mlp_beta.bias, padding=1)
    assert_close_relative(spade(h, f), n * (1 + gamma) + beta, 1e-5)  # the same float32 ops, composed by hand


def test_spade_with_zero_gamma_and_beta_is_the_affine_norm():
    spade = seeded(SPADE(32, 8, hidden=8))
    with torch.no_grad():
        for conv in (spade.mlp_gamma, spade.mlp_beta):
            conv.weight.zero_()
            conv.bias.zero_()
    h = torch.randn(1, 32, 4, 4)
    assert_close_relative(spade(h, torch.randn(1, 8, 4, 4)), spade.param_free_norm(h), 1e-6)  # n * 1 + 0: rounding


def test_legacy_attention_splits_q_k_v_within_each_head():
    block = seeded(AttentionBlock(64, heads=4))
    x = torch.randn(2, 64, 3, 5)
    flat = x.reshape(2, 64, 15)
    qkv = block.qkv(block.norm(flat))  # [B, 3C, T]: per head, its q, k and v channels side by side
    out = []
    for head in qkv.reshape(2, 4, 3 * 16, 15).unbind(1):
        q, k, v = head.split(16, dim=1)
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(16), dim=-1)
        out.append(torch.einsum("bts,bcs->bct", weights, v))
    expected = flat + block.proj_out(torch.cat(out, dim=1))
    assert_close_relative(block(x), expected.reshape(2, 64, 3, 5), 1e-5)  # float32 attention by hand vs its kernel


def test_encoder_features_at_every_resolution_depend_on_the_timestep():
    config = EncoderConfig(model_channels=32, feature_channels=64)
    encoder = seeded(TimeAwareEncoder(config), seed=1).eval()
    x = torch.randn(2, 4, 24, 16)
    with torch.no_grad():
        features = encoder(x, torch.tensor([999, 999]))
        other = encoder(x, torch.tensor([10, 10]))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        (24, 16): (2, 64, 24, 16), (12, 8): (2, 64, 12, 8), (6, 4): (2, 64, 6, 4), (3, 2): (2, 64, 3, 2)}
    assert all(relative_error(features[k], other[k]) > 1e-3 for k in features)
    assert EncoderConfig.from_shapes({k: tuple(v.shape) for k, v in encoder.state_dict().items()}) == config


def test_spade_layers_state_dict_is_the_files_layout():
    layers = SPADELayers({"input_blocks.1.0": 32, "middle_block.0": 64}, feature_channels=16, hidden=8)
    assert sorted(layers.state_dict()) == sorted(f"{b}.spade.{p}" for b in ("input_blocks.1.0", "middle_block.0")
                                                 for p in ("param_free_norm.weight", "param_free_norm.bias",
                                                           "mlp_shared.0.weight", "mlp_shared.0.bias",
                                                           "mlp_gamma.weight", "mlp_gamma.bias",
                                                           "mlp_beta.weight", "mlp_beta.bias"))
    assert layers.layer("middle_block.0").param_free_norm.num_channels == 64


def test_respaced_timesteps_are_the_official_ones():
    assert respaced_timesteps(4) == [0, 333, 666, 999]
    t200 = respaced_timesteps(200)
    assert t200[:4] == [0, 5, 10, 15] and t200[-3:] == [989, 994, 999] and len(set(t200)) == 200
    assert respaced_timesteps(1000) == list(range(1000))
    # the official space_timesteps adds up the stride 49.95 in floating point: 10 strides give 499.4999..., not 499.5
    assert respaced_timesteps(21)[9:12] == [450, 499, 549]
    with pytest.raises(ValueError, match="steps must be between 2 and 1000"):
        respaced_timesteps(1)


def test_ddim_alpha_timesteps_are_the_scripts_uniform_spacing_without_the_plus_one():
    assert ddim_alpha_timesteps(50)[:3] == [0, 20, 40] and ddim_alpha_timesteps(50)[-1] == 980
    assert ddim_alpha_timesteps(30) == list(range(0, 1000, 33))[:30]  # 31 spaced values, the first 30 used
    assert len(ddim_alpha_timesteps(4)) == 4


def test_schedule_sigmas_are_the_table_at_the_timesteps_in_sampling_order():
    table = ddpm_sigmas()
    sigmas = schedule_sigmas(table, respaced_timesteps(4))
    assert float(1 / (1 + table[999] ** 2)) == pytest.approx(0.0046601, rel=1e-4)  # ᾱ_999
    assert float(sigmas[0]) == pytest.approx(14.6146, rel=1e-4) and float(sigmas[-2]) == pytest.approx(0.029167,
                                                                                                        rel=1e-3)
    assert sigmas[-1] == 0 and bool((sigmas[:-1].diff() < 0).all())


def test_ddim_with_eta_0_is_euler_and_publishes_the_model_timesteps():
    sigmas = schedule_sigmas(ddpm_sigmas(), ddim_alpha_timesteps(4))
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    seen = []

    def denoiser(x, sigma, model_options=None, seed=None):  # a denoiser that shrinks toward 0.5
        seen.append((model_options or {}).get("transformer_options", {}).get(TIMESTEP_KEY))
        return 0.5 + x / (1 + sigma[:, None, None, None] ** 2)
    out = sample_stablesr_ddim(denoiser, x, sigmas, {"model_options": {}}, disable=True,
                               model_timesteps=[999, 666, 333, 0])
    assert seen == [999, 666, 333, 0]
    euler = x
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        before_last = euler
        d = euler - denoiser(euler, sigma[None])
        euler = euler + d / sigma * (sigma_next - sigma)
    assert_close_relative(out, euler, 1e-5)  # DDIM at eta 0 is Euler in σ: the same float32 steps rearranged
    final = sample_stablesr_ddim(denoiser, x, sigmas, {}, disable=True, sigma_final=float(sigmas[-2]))
    a0 = 1 / (1 + sigmas[-2] ** 2)  # the official last step stays at ᾱ_0 and returns x_vp = √ᾱ_0 x
    assert_close_relative(final, a0.sqrt() * before_last, 1e-4)  # as above, one step more


# --- CFW (supir/stablesr/cfw.py) ---

def test_official_cfw_layout_and_parameter_count():
    with open(LAYOUT) as f:
        data = json.load(f)
    sd = {k: torch.empty(v, device="meta") for k, v in data["vqgan_cfw_ckpt"].items()}
    vae, fusion = split_cfw_state_dict(sd)
    assert len(fusion) == 156 and len(vae) == 248
    layers = CFWLayers.from_shapes({k: tuple(v.shape) for k, v in fusion.items()}, device="meta")
    assert {k: tuple(v.shape) for k, v in layers.state_dict().items()} == {k: tuple(v.shape) for k, v in fusion.items()}
    assert parameter_count(layers) == data["params"]["cfw_fusion"] == 44_393_728
    assert layers.levels == [1, 2] and layers.layer(1).encode_enc_3.conv2.out_channels == 256


def test_official_cfw_file_gives_the_official_vae_config_and_fusion_layers_that_fit_it():
    with open(LAYOUT) as f:
        data = json.load(f)
    sd = {k: torch.empty(v, device="meta") for k, v in data["vqgan_cfw_ckpt"].items()}
    sd["loss.logvar"] = torch.empty((), device="meta")  # the training loss's tensors are ignored
    vae, fusion = split_cfw_state_dict(sd, "vqgan_cfw_00011.ckpt")
    assert "loss.logvar" not in vae and len(vae) == 248
    config, embed_dim = vae_config(vae)
    official = data["configs"]["cfw_ddconfig"]
    assert embed_dim == 4 and {k: v for k, v in config.items() if k != "resolution"} == {
        k: v for k, v in official.items() if k != "resolution"}
    layers = fusion_layout(fusion, "vqgan_cfw_00011.ckpt")
    check_fusion_fits(layers, {i: config["ch"] * m for i, m in enumerate(config["ch_mult"])}, "its VAE", "f")
    with pytest.raises(StableSRCheckpointError, match="f: fusion_layer_2 is 512 channels wide but the other VAE has "
                                                      "256 channels at level 2; .*SD 2.1 VAE layout"):
        check_fusion_fits(layers, {1: 256, 2: 256}, "the other VAE", "f")
    with pytest.raises(StableSRCheckpointError, match="fusion_layer_2 is 512 channels wide but the other VAE has "
                                                      "no level 2"):
        check_fusion_fits(layers, {0: 128, 1: 256}, "the other VAE", "f")
    with pytest.raises(StableSRCheckpointError, match="f: the VAE part is incomplete .*encoder.conv_in.weight"):
        vae_config({k: v for k, v in vae.items() if k != "encoder.conv_in.weight"}, "f")


def test_files_without_fusion_layers_are_named_for_what_they_are():
    cases = {
        "StableSR's diffusion checkpoint": {"structcond_stage_model.input_blocks.0.0.weight": torch.zeros(1),
                                            "first_stage_model.decoder.conv_in.weight": torch.zeros(1)},
        "SUPIR file": {"model.control_model.input_blocks.0.0.weight": torch.zeros(1)},
        "a Stable Diffusion checkpoint": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
        "plain VAE without CFW's fusion layers": {"decoder.conv_in.weight": torch.zeros(1)},
        "no decoder.fusion_layer_\\* tensors among 1": {"head.weight": torch.zeros(1)},
    }
    for what, sd in cases.items():
        with pytest.raises(StableSRCheckpointError, match=f"x.ckpt: .*{what}.*vqgan_cfw_00011.ckpt"):
            split_cfw_state_dict(sd, "x.ckpt")
    with pytest.raises(StableSRCheckpointError, match="x.ckpt: the fusion layers' tensors do not form"):
        fusion_layout({"fusion_layer_1.encode_enc_1.conv1.weight": torch.zeros(1)}, "x.ckpt")


def test_cfw_weight_zero_is_the_plain_decoder_and_the_fusion_is_linear_in_w():
    fusion = seeded(CFWFusion(32, blocks=1, growth=8), seed=2)
    enc, dec = torch.randn(1, 32, 6, 6), torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fusion(enc, dec, 0.0), dec, rtol=0, atol=0)  # dec + 0 * residual
        half, full = fusion(enc, dec, 0.5), fusion(enc, dec, 1.0)
    assert_close_relative(half - dec, (full - dec) / 2, 1e-5)  # float32 rounding of dec + w * residual
    assert relative_error(full, dec) > 1e-2


def test_dense_block_equation():
    block = seeded(ResidualDenseBlock(16, 4), seed=3)
    x = torch.randn(1, 16, 5, 5)
    feats = [x]
    for i in range(1, 5):
        conv = getattr(block, f"conv{i}")
        feats.append(F.leaky_relu(F.conv2d(torch.cat(feats, 1), conv.weight, conv.bias, padding=1), 0.2))
    expected = F.conv2d(torch.cat(feats, 1), block.conv5.weight, block.conv5.bias, padding=1) * 0.2 + x
    with torch.no_grad():
        assert_close_relative(block(x), expected, 1e-5)  # the same float32 convolutions, composed by hand
