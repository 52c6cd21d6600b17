"""Tier 1: LoRA key conversion, inspection and SVD merging without ComfyUI."""
import pytest
import safetensors.torch
import torch

from helpers import assert_close_relative
from supir_restore.supir.lora.formats import LoraFormatError, LowRank, convert_peft, inspect_lora, kohya_name, lora_format, \
    low_rank_modules, merge_low_rank, target_kind, to_kohya


def low_rank(out, inp, rank, seed, alpha=None, kernel=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if kernel:
        return LowRank(torch.randn(out, rank, 1, 1, generator=g, dtype=dtype),
                       torch.randn(rank, inp, kernel, kernel, generator=g, dtype=dtype), alpha)
    return LowRank(torch.randn(out, rank, generator=g, dtype=dtype), torch.randn(rank, inp, generator=g, dtype=dtype),
                   alpha)


def three_loras():
    a = {"lin": low_rank(12, 10, 3, 0, alpha=1.5), "conv": low_rank(6, 4, 2, 1, alpha=2.0, kernel=3)}
    b = {"lin": low_rank(12, 10, 4, 2), "only_b": low_rank(5, 7, 2, 3, alpha=8.0)}
    c = {"lin": low_rank(12, 10, 2, 4, alpha=0.5), "conv": low_rank(6, 4, 1, 5, kernel=3)}
    return [(a, 0.7), (b, -0.4), (c, 1.3)]


def weighted_sum(stack, name):
    return sum(weight * modules[name].delta(torch.float64) for modules, weight in stack if name in modules)


def test_full_rank_merge_is_the_weighted_sum_of_deltas():
    stack = three_loras()
    merged = merge_low_rank(stack, rank=64, dtype=torch.float64)
    assert set(merged) == {"lin", "conv", "only_b"}
    for name, module in merged.items():
        expected = weighted_sum(stack, name)
        assert module.delta(torch.float64).shape == expected.shape
        assert_close_relative(module.delta(torch.float64), expected, 1e-10)  # a float64 SVD and its product
    assert merged["conv"].up.shape == (6, merged["conv"].rank, 1, 1) and merged["conv"].down.shape[2:] == (3, 3)
    assert merged["lin"].rank == 10 and merged["only_b"].rank == 5  # min(out, in) when rank is above it


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncation_error_equals_the_discarded_singular_values(rank):
    stack = three_loras()
    merged = merge_low_rank(stack, rank=rank, dtype=torch.float64)
    for name in ("lin", "conv"):
        total = weighted_sum(stack, name)
        s = torch.linalg.svdvals(total.flatten(1))
        error = (merged[name].delta(torch.float64) - total).flatten(1)
        assert merged[name].rank == min(rank, s.numel())
        # Eckart-Young, in float64: the SVD's rounding relative to the whole delta's size
        assert torch.linalg.matrix_norm(error).item() == pytest.approx(s[rank:].square().sum().sqrt().item(),
                                                                       abs=1e-10 * s[0].item())


def test_merge_rejects_bad_rank_and_mismatched_shapes():
    with pytest.raises(LoraFormatError, match="rank must be at least 1"):
        merge_low_rank(three_loras(), rank=0)
    with pytest.raises(LoraFormatError, match="different base models"):
        merge_low_rank([({"lin": low_rank(12, 10, 2, 0)}, 1.0), ({"lin": low_rank(12, 768, 2, 1)}, 1.0)], rank=4)


def test_kohya_round_trip(tmp_path):
    modules = {"lora_unet_a_attn1_to_q": low_rank(8, 6, 2, 0, alpha=1.0, dtype=torch.float32),
               "lora_unet_b_conv": low_rank(4, 3, 2, 1, kernel=3, dtype=torch.float32)}
    path = tmp_path / "lora.safetensors"
    safetensors.torch.save_file(to_kohya(modules, torch.float32), str(path))
    loaded = low_rank_modules(safetensors.torch.load_file(str(path)))
    assert set(loaded) == set(modules)
    for name, module in modules.items():
        torch.testing.assert_close(loaded[name].up, module.up, rtol=0, atol=0)
        torch.testing.assert_close(loaded[name].down, module.down, rtol=0, atol=0)
        assert_close_relative(loaded[name].delta(), module.delta(), 1e-6)  # alpha / rank is rescaled in float32
    assert loaded["lora_unet_b_conv"].alpha == 2.0  # no alpha given: saved as alpha = rank, the same scale 1


def sdxl_attention_modules() -> list[str]:
    """Every SDXL UNet attention projection in diffusers naming: transformer depth 2 in down_blocks.1 and
    up_blocks.1, 10 in down_blocks.2, the mid block and up_blocks.0; two attentions per down block, three per up."""
    blocks = [(f"down_blocks.{b}.attentions.{a}", depth) for b, depth in ((1, 2), (2, 10)) for a in range(2)]
    blocks += [("mid_block.attentions.0", 10)]
    blocks += [(f"up_blocks.{b}.attentions.{a}", depth) for b, depth in ((0, 10), (1, 2)) for a in range(3)]
    return [f"{block}.transformer_blocks.{t}.{attn}.{proj}" for block, depth in blocks for t in range(depth)
            for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")]


def test_peft_conversion_renames_every_sdxl_attention_module():
    names = sdxl_attention_modules()
    assert len(names) == 70 * 8
    sd = {}
    for i, name in enumerate(names):
        sd[f"unet.{name}.lora_A.weight"] = torch.full((2, 3), float(i))
        sd[f"unet.{name}.lora_B.weight"] = torch.full((3, 2), -float(i))
    sd["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(2, 3)
    converted = convert_peft(sd)
    assert len(converted) == len(sd)
    for i, name in enumerate(names):
        kohya = "lora_unet_" + name.replace(".", "_")
        assert torch.equal(converted[kohya + ".lora_down.weight"], sd[f"unet.{name}.lora_A.weight"])
        assert torch.equal(converted[kohya + ".lora_up.weight"], sd[f"unet.{name}.lora_B.weight"])
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in converted
    assert lora_format(sd) == "peft" and lora_format(converted) == "kohya+peft"  # text-encoder PEFT names stay


def test_peft_conversion_keeps_alpha_default_adapters_and_processor_names():
    sd = {"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.default.weight": torch.zeros(2, 4),
          "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.default.weight": torch.zeros(4, 2),
          "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.alpha": torch.tensor(4.0),
          "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(4, 2),
          "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": torch.zeros(2, 4)}
    converted = convert_peft(sd)
    stem = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    processor = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q"
    assert set(converted) == {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha",
                              f"{processor}_lora.up.weight", f"{processor}_lora.down.weight"}
    assert low_rank_modules(converted)[stem].alpha == 4.0 and processor in low_rank_modules(converted)


def test_missing_down_weight_is_a_clear_error():
    with pytest.raises(LoraFormatError, match="lora_down.weight.*incomplete"):
        low_rank_modules({"lora_unet_x.lora_up.weight": torch.zeros(3, 2)})


def kohya_lora(context_width: int, rank: int = 4, alpha: float = 2.0, te2: bool = False) -> dict:
    sd = {}
    for name, shape in ((f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", (640, context_width)),
                        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", (640, 640)),
                        ("lora_unet_input_blocks_4_1_transformer_blocks_0_ff_net_0_proj", (5120, 640))):
        sd[f"{name}.lora_down.weight"] = torch.zeros(rank, shape[1])
        sd[f"{name}.lora_up.weight"] = torch.zeros(shape[0], rank)
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    if te2:
        sd["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(rank, 1280)
        sd["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, rank)
    return sd


@pytest.mark.parametrize("width,base", [(2048, "SDXL"), (768, "SD1.5"), (1024, "SD2.x")])
def test_inspect_reports_rank_alpha_targets_and_base(width, base):
    info = inspect_lora(kohya_lora(width, rank=8, alpha=4.0))
    assert (info.format, info.base, info.ranks, info.alphas) == ("kohya", base, [8], [4.0])
    assert str(width) in info.base_reason
    assert info.parts == {"unet": 3}
    assert info.targets == {"attn2_to_k": 1, "attn1_to_q": 1, "ff_net_0": 1}
    assert f"base model: {base}" in info.describe()


def test_inspect_base_from_second_text_encoder_and_unknown():
    te_only = {k: v for k, v in kohya_lora(2048, te2=True).items() if k.startswith("lora_te2_")}
    info = inspect_lora(te_only)
    assert (info.base, info.parts) == ("SDXL", {"te2": 1})
    assert inspect_lora({"foo.lora_up.weight": torch.zeros(2, 1), "foo.lora_down.weight": torch.zeros(1, 2)}).base \
        == "unknown"


def test_inspect_lycoris_and_peft_formats():
    loha = {"lora_unet_x_attn1_to_q.hada_w1_a": torch.zeros(4, 2), "lora_unet_x_attn1_to_q.hada_w1_b": torch.zeros(2, 4)}
    assert inspect_lora(loha).lycoris == ["lora_unet_x_attn1_to_q"] and lora_format(loha) == "lycoris"
    peft = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(4, 2048),
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": torch.zeros(640, 4)}
    info = inspect_lora(peft)
    assert (info.format, info.base, info.ranks, info.alphas) == ("peft", "SDXL", [4], [])


def test_target_kind_and_kohya_names():
    assert target_kind("unet.up_blocks.0.attentions.1.transformer_blocks.3.attn1.to_out.0") == "attn1_to_out"
    assert target_kind("lora_te1_text_model_encoder_layers_11_mlp_fc2") == "mlp_fc2"
    assert target_kind("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k") == "attn2_to_k"
    assert kohya_name("diffusion_model.output_blocks.3.1.proj_in.weight") == "lora_unet_output_blocks_3_1_proj_in"
    assert kohya_name("clip_l.transformer.text_model.encoder.layers.2.mlp.fc1.weight") == \
        "lora_te1_text_model_encoder_layers_2_mlp_fc1"
    assert kohya_name("clip_g.transformer.text_model.final_layer_norm.weight") == \
        "text_encoders.clip_g.transformer.text_model.final_layer_norm"


# ---------------------------------------------------------------------------------------------------------------
# Region blend (supir/region_mask.py): the mask at latent resolution and the masked mix, without ComfyUI.
# ---------------------------------------------------------------------------------------------------------------

from supir_restore.supir.image.region_mask import RegionMaskError, latent_mask, masked_mix  # noqa: E402


def test_masked_mix_is_exact_at_both_ends_and_linear_between():
    g = torch.Generator().manual_seed(0)
    inside, outside = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    weights = torch.rand(2, 1, 3, 5, generator=g)
    weights[0, 0, 0], weights[1, 0, 1] = 1.0, 0.0
    mixed = masked_mix(weights, inside, outside)
    assert torch.equal(mixed[0, :, 0], inside[0, :, 0]) and torch.equal(mixed[1, :, 1], outside[1, :, 1])
    w = weights.double()
    assert_close_relative(mixed.double(), w * inside.double() + (1 - w) * outside.double(), 1e-6)  # a float32 lerp
    shared = masked_mix(weights[:1], inside, outside)  # one mask for the whole batch
    assert torch.equal(shared[1], masked_mix(weights[:1], inside[1:], outside[1:])[0])


def test_latent_mask_averages_each_latent_pixel_and_keeps_flat_regions_exact():
    mask = torch.zeros(64, 96)
    mask[:, :48] = 1.0  # the left half: a boundary between latent columns 5 and 6
    weights = latent_mask(mask, 8, 12, batch=2)
    assert weights.shape == (1, 1, 8, 12) and weights.dtype == torch.float32
    assert torch.equal(weights[..., :5], torch.ones(1, 1, 8, 5))
    assert torch.equal(weights[..., 7:], torch.zeros(1, 1, 8, 5))
    # triangle filter 8 px each side, float32 taps summing to 1
    assert_close_relative(weights[..., 5], torch.full((1, 1, 8), 7 / 8), 1e-6)
    assert_close_relative(weights[..., 6], torch.full((1, 1, 8), 1 / 8), 1e-5)  # a smaller sum of the same taps
    block = torch.zeros(1, 64, 96)
    block[:, 24:32, 40:48] = 1.0  # exactly latent pixel (3, 5)
    assert latent_mask(block, 8, 12, batch=1)[0, 0].argmax() == 3 * 12 + 5


def test_latent_mask_batches_clamps_and_feathers():
    g = torch.Generator().manual_seed(1)
    per_image = torch.rand(3, 32, 32, generator=g)
    assert latent_mask(per_image, 4, 4, batch=3).shape == (3, 1, 4, 4)
    over = latent_mask(torch.full((16, 16), 2.0), 2, 2, batch=1)
    under = latent_mask(torch.full((16, 16), -1.0), 2, 2, batch=1)
    assert torch.equal(over, torch.ones_like(over)) and torch.equal(under, torch.zeros_like(under))
    mask = torch.zeros(1, 128, 128)
    mask[..., :64] = 1.0
    hard = latent_mask(mask, 16, 16, batch=1)
    soft = latent_mask(mask, 16, 16, batch=1, feather=2.0)
    assert_close_relative(latent_mask(torch.ones(64, 64), 8, 8, 1, feather=3.0), torch.ones(1, 1, 8, 8), 1e-5)  # taps
    row = soft[0, 0, 5]
    assert (row[1:] <= row[:-1]).all() and row[0] > 0.99 and row[-1] < 0.01
    assert_close_relative(row + row.flip(0), torch.ones(16), 1e-5)  # the blur is symmetric about the edge
    assert (soft[0, 0, 5, 3:7] < hard[0, 0, 5, 3:7]).all() and (soft[0, 0, 5, 9:13] > hard[0, 0, 5, 9:13]).all()


@pytest.mark.parametrize("mask, batch, message", [
    (torch.ones(2, 64, 64), 3, "2 masks for a batch of 3 latents"),
    (torch.ones(1, 64, 32), 1, "region mask is 32x64 px but the image being sampled is 64x64 px"),
    (torch.full((64, 64), float("nan")), 1, "NaN or infinite"),
    (torch.ones(1, 1, 64, 64), 1, r"shape \(1, 1, 64, 64\)"),
])
def test_latent_mask_refuses_masks_that_do_not_fit(mask, batch, message):
    with pytest.raises(RegionMaskError, match=message):
        latent_mask(mask, 8, 8, batch)


def test_latent_mask_accepts_the_aspect_change_of_snapping_to_multiples():
    # a 1000x700 image restored x2 samples at 1984x1408 (multiples of 64): its mask is stretched, not refused
    assert latent_mask(torch.ones(700, 1000), 176, 248, batch=1).shape == (1, 1, 176, 248)
