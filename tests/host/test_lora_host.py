"""Tier 2: LoRA stacks through ComfyUI's patching on the tiny SDXL model and CLIP, merging, baking, and the
PEFT key conversion against ComfyUI's full-size SDXL key map."""
import os
import re

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")

import safetensors.torch  # noqa: E402
import torch  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.supported_models  # noqa: E402

from supir_restore.nodes.lora_nodes import (NODES, SUPIRLoraInspect, SUPIRLoraMerge, SUPIRLoraStack,  # noqa: E402
                                            SUPIRSaveBakedCheckpoint)
from supir_restore.supir.lora.formats import LoraFormatError, LowRank, convert_peft  # noqa: E402
from supir_restore.supir.host.lora_stack import LoraMismatchError, apply_lora_stack, bake_checkpoint, merge_loras, \
    save_merged_lora  # noqa: E402
from supir_restore.supir.weights import CorruptWeightsError, UnsafeWeightsError  # noqa: E402
from host_helpers import run_node  # noqa: E402
from helpers import assert_close_relative, damaged_files, malicious_files, relative_error  # noqa: E402
from test_full_size import SDXL_UNET  # noqa: E402
from test_lora import sdxl_attention_modules  # noqa: E402

# Tiny-model weights by their diffusers names (input_blocks.4.1 = down_blocks.1.attentions.0, output_blocks.3.1 =
# up_blocks.1.attentions.0, input_blocks.1.0.in_layers.2 = down_blocks.0.resnets.0.conv1).
TARGETS = {
    "input_blocks.4.1.transformer_blocks.0.attn2.to_k": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0":
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "input_blocks.1.0.in_layers.2": "down_blocks.0.resnets.0.conv1",
}
TE1 = "clip_l.transformer.text_model.encoder.layers.1.self_attn.q_proj"
STRENGTH = 0.7


def modules_for(model, seed=0, rank=3, alpha=1.5) -> dict[str, LowRank]:
    """A random low-rank module per TARGETS weight, shaped like it (convs get a kernel-shaped down)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.model.diffusion_model.state_dict()
    out = {}
    for path in TARGETS:
        w = sd[path + ".weight"]
        out[path] = LowRank(torch.randn(w.shape[0], rank, *([1] * (w.ndim - 2)), generator=g),
                            torch.randn(rank, *w.shape[1:], generator=g) / 4, alpha)
    return out


def file_for(modules: dict[str, LowRank], fmt: str) -> dict[str, torch.Tensor]:
    """The modules written as a LoRA file of format ``fmt``."""
    names = {"kohya": lambda p: "lora_unet_" + p.replace(".", "_"), "comfyui": lambda p: "diffusion_model." + p,
             "peft": lambda p: "unet." + TARGETS[p]}
    up, down = (".lora_B.weight", ".lora_A.weight") if fmt == "peft" else (".lora_up.weight", ".lora_down.weight")
    sd = {}
    for path, m in modules.items():
        name = names[fmt](path)
        sd[name + up], sd[name + down], sd[name + ".alpha"] = m.up, m.down, torch.tensor(m.alpha)
    return sd


def patched_weights(model) -> dict[str, torch.Tensor]:
    """The UNet weights with the patcher's patches applied (then removed again)."""
    model.patch_model()
    try:
        return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    finally:
        model.unpatch_model()


@pytest.mark.parametrize("fmt", ["kohya", "comfyui", "peft"])
def test_each_format_patches_exactly_strength_times_delta(tiny_model, fmt):
    base = {k: v.clone() for k, v in tiny_model.model.diffusion_model.state_dict().items()}
    modules = modules_for(tiny_model)
    model, _, report = apply_lora_stack(tiny_model, None, [("l", file_for(modules, fmt), STRENGTH)])
    after = patched_weights(model)
    for path, m in modules.items():  # ComfyUI's float32 up @ down product and sum against ours: rounding only
        assert_close_relative(after[path + ".weight"], base[path + ".weight"] + STRENGTH * m.delta(), 1e-6)
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed == {p + ".weight" for p in TARGETS}
    assert "9 of 9 tensors applied → 3 UNet weights, 0 text-encoder weights" in report
    assert torch.equal(tiny_model.model.diffusion_model.state_dict()[next(iter(TARGETS)) + ".weight"],
                       base[next(iter(TARGETS)) + ".weight"])  # the input model is untouched (patches on a clone)


def test_lycoris_loha_is_passed_through(tiny_model):
    g = torch.Generator().manual_seed(3)
    path = "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"
    w = tiny_model.model.diffusion_model.state_dict()[path + ".weight"]
    w1a, w1b = torch.randn(w.shape[0], 2, generator=g), torch.randn(2, w.shape[1], generator=g)
    w2a, w2b = torch.randn(w.shape[0], 2, generator=g), torch.randn(2, w.shape[1], generator=g)
    name = "lora_unet_" + path.replace(".", "_")
    sd = {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b,
          f"{name}.alpha": torch.tensor(1.0)}
    model, _, report = apply_lora_stack(tiny_model, None, [("loha", sd, STRENGTH)])
    delta = (w1a @ w1b) * (w2a @ w2b) * (1.0 / 2)
    assert_close_relative(patched_weights(model)[path + ".weight"], w + STRENGTH * delta, 1e-6)  # float32 rounding
    assert "5 of 5 tensors applied → 1 UNet weights" in report


def test_patched_model_output_changes(tiny_model):
    from test_unet_patch import one_step
    model, _, _ = apply_lora_stack(tiny_model, None, [("l", file_for(modules_for(tiny_model), "kohya"), 1.0)])
    assert relative_error(one_step(model), one_step(tiny_model)) > 1e-3


def test_text_encoder_keys_patch_clip_and_report_counts(tiny_model, tiny_clip):
    g = torch.Generator().manual_seed(5)
    sd = file_for(modules_for(tiny_model), "kohya")
    te = "lora_te1_text_model_encoder_layers_1_self_attn_q_proj"
    sd[te + ".lora_up.weight"], sd[te + ".lora_down.weight"] = torch.randn(768, 2, generator=g), torch.randn(2, 768, generator=g)
    sd["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(4, 2)
    sd["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(2, 4)
    base = tiny_clip.cond_stage_model.state_dict()[TE1 + ".weight"].clone()
    model, clip, report = apply_lora_stack(tiny_model, tiny_clip, [("mixed", sd, 0.5)])
    assert ("11 of 13 tensors applied → 3 UNet weights, 1 text-encoder weights; 2 ignored: "
            "lora_unet_not_a_layer.lora_up.weight, lora_unet_not_a_layer.lora_down.weight") in report
    after = comfy.lora.calculate_weight(clip.patcher.patches[TE1 + ".weight"], base.clone(), TE1 + ".weight")
    assert_close_relative(after, base + 0.5 * sd[te + ".lora_up.weight"] @ sd[te + ".lora_down.weight"],
                          1e-6)  # float32 rounding of one product and sum


def sd15_lora(rank=2) -> dict[str, torch.Tensor]:
    """An SD1.5 LoRA: kohya names of SD1.5 layers (diffusers naming), cross-attention to_k 768 wide."""
    sd = {}
    for block, width in (("down_blocks_0_attentions_0", 32), ("down_blocks_1_attentions_0", 64)):
        name = f"lora_unet_{block}_transformer_blocks_0_attn2_to_k"
        sd[name + ".lora_up.weight"], sd[name + ".lora_down.weight"] = torch.ones(width, rank), torch.ones(rank, 768)
    return sd


def test_sd15_lora_is_a_clear_error(tiny_model):
    with pytest.raises(LoraMismatchError, match=r"'sd15'.*made for SD1.5 \(cross-attention to_k input width 768"
                                                r".*Use a LoRA trained for SDXL"):
        apply_lora_stack(tiny_model, None, [("sd15", sd15_lora(), 1.0)])


def test_layers_of_another_shape_are_left_out_and_counted(tiny_model):
    sd = file_for(modules_for(tiny_model), "kohya")
    other = "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k"  # an SDXL layer's name, 768 wide
    sd[other + ".lora_up.weight"], sd[other + ".lora_down.weight"] = torch.ones(64, 2), torch.ones(2, 768)
    model, _, report = apply_lora_stack(tiny_model, None, [("mixed", sd, 1.0)])
    assert "9 of 11 tensors applied → 3 UNet weights" in report
    assert "(1 layers matched by name but not by shape)" in report
    assert set(model.patches) == {"diffusion_model." + p + ".weight" for p in TARGETS}


def test_stack_node_applies_in_order_and_reports(tiny_model, tiny_clip, lora_folder):
    a, b = modules_for(tiny_model, seed=1), modules_for(tiny_model, seed=2)
    safetensors.torch.save_file(file_for(a, "kohya"), str(lora_folder / "loras" / "a.safetensors"))
    safetensors.torch.save_file(file_for(b, "peft"), str(lora_folder / "loras" / "b.safetensors"))
    base = {k: v.clone() for k, v in tiny_model.model.diffusion_model.state_dict().items()}
    slots = {"lora_1": "a.safetensors", "strength_1": 0.5, "lora_2": "None", "strength_2": 1.0,
             "lora_3": "b.safetensors", "strength_3": -1.0, "lora_4": "a.safetensors", "strength_4": 0.0}
    model, clip, report = run_node(SUPIRLoraStack, model=tiny_model, clip=tiny_clip, **slots).result
    after = patched_weights(model)
    for path in TARGETS:  # float32 rounding of the products and sums
        assert_close_relative(after[path + ".weight"], base[path + ".weight"] + 0.5 * a[path].delta() - b[path].delta(),
                              1e-6)
    lines = report.splitlines()
    assert lines[0].startswith("a.safetensors (strength 0.5): 9 of 9 tensors applied → 3 UNet weights")
    assert lines[1].startswith("b.safetensors (strength -1): 9 of 9 tensors applied")
    assert lines[2] == "a.safetensors: skipped (strength 0)" and len(lines) == 3


def test_inspect_node(lora_folder):
    safetensors.torch.save_file(sd15_lora(rank=2), str(lora_folder / "loras" / "sd15.safetensors"))
    report = run_node(SUPIRLoraInspect, lora_name="sd15.safetensors").result[0]
    assert "base model: SD1.5" in report and "rank: 2" in report and "attn2_to_k ×2" in report


def test_merge_of_two_formats_saves_the_exact_weighted_sum(tiny_model, tiny_clip, lora_folder):
    a, b = modules_for(tiny_model, seed=1), modules_for(tiny_model, seed=2, rank=2, alpha=4.0)
    stack = [("a", file_for(a, "kohya"), 0.6), ("b", file_for(b, "peft"), -0.3)]
    sd, report = merge_loras(tiny_model, tiny_clip, stack, rank=64, dtype=torch.float32)
    path = save_merged_lora(sd, "loras/merged", [("a", 0.6), ("b", -0.3)])
    assert path.startswith(str(lora_folder / "output" / "loras")) and "merged: 3 layers" in report
    merged = safetensors.torch.load_file(path)
    assert all(k.startswith("lora_unet_") for k in merged)
    base = {k: v.clone() for k, v in tiny_model.model.diffusion_model.state_dict().items()}
    model, _, _ = apply_lora_stack(tiny_model, None, [("merged", merged, 1.0)])
    after = patched_weights(model)
    for path in TARGETS:  # rank 64 keeps the whole sum; a float32 SVD rounds far more than the products
        assert_close_relative(after[path + ".weight"],
                              base[path + ".weight"] + 0.6 * a[path].delta() - 0.3 * b[path].delta(), 2e-4)


def test_merge_node_writes_under_output(tiny_model, lora_folder):
    safetensors.torch.save_file(file_for(modules_for(tiny_model), "kohya"), str(lora_folder / "loras" / "a.safetensors"))
    slots = {f"lora_{i}": "None" for i in range(2, 5)} | {f"weight_{i}": 1.0 for i in range(1, 5)}
    report = run_node(SUPIRLoraMerge, model=tiny_model, lora_1="a.safetensors", rank=2, save_dtype="fp16",
                      filename_prefix="merged/x", **slots).result[0]
    saved = list((lora_folder / "output" / "merged").iterdir())
    assert len(saved) == 1 and str(saved[0]) in report
    tensors = safetensors.torch.load_file(str(saved[0]))
    assert tensors["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight"].shape == (2, 2048)
    assert tensors["lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight"].dtype == torch.float16
    with pytest.raises(LoraMismatchError, match="SD1.5"):
        merge_loras(tiny_model, None, [("sd15", sd15_lora(), 1.0)], rank=4)


@pytest.mark.parametrize("prefix, problem", [("", "empty"), ("merged/a\nb", "control character"),
                                             ("merged/" + "m" * 240, "too long"), ("merged/", "ends with a folder")])
def test_merge_and_bake_nodes_check_the_prefix_before_working(tiny_model, lora_folder, prefix, problem):
    safetensors.torch.save_file(file_for(modules_for(tiny_model), "kohya"), str(lora_folder / "loras" / "a.safetensors"))
    slots = {f"lora_{i}": "None" for i in range(2, 5)} | {f"weight_{i}": 1.0 for i in range(1, 5)}
    with pytest.raises(ValueError, match=f"^filename_prefix.*{problem}"):
        run_node(SUPIRLoraMerge, model=None, lora_1="a.safetensors", rank=2, save_dtype="fp16",  # no model: not used
                 filename_prefix=prefix, **slots)
    with pytest.raises(ValueError, match=f"^filename_prefix.*{problem}"):
        run_node(SUPIRSaveBakedCheckpoint, model=None, clip=None, vae=None, filename_prefix=prefix)
    assert list((lora_folder / "output").iterdir()) == []


def test_a_lora_file_with_non_finite_values_is_named(tiny_model, lora_folder):
    sd = file_for(modules_for(tiny_model), "kohya")
    key = next(k for k in sd if k.endswith("lora_up.weight"))
    sd[key][0, 0] = float("nan")
    safetensors.torch.save_file(sd, str(lora_folder / "loras" / "diverged.safetensors"))
    slots = {f"lora_{i}": "None" for i in range(2, 5)} | {f"strength_{i}": 1.0 for i in range(1, 5)}
    with pytest.raises(LoraFormatError, match=rf"^diverged.safetensors: 1 tensor\(s\) hold NaN .*{key}"):
        run_node(SUPIRLoraStack, model=tiny_model, lora_1="diverged.safetensors", **slots)


def test_bake_checkpoint(tiny_model, tiny_clip, tiny_vae, lora_folder):
    modules = modules_for(tiny_model)
    base = {k: v.clone() for k, v in tiny_model.model.diffusion_model.state_dict().items()}
    model, clip, _ = apply_lora_stack(tiny_model, tiny_clip, [("a", file_for(modules, "comfyui"), STRENGTH)])
    path = bake_checkpoint(model, clip, tiny_vae, "checkpoints/baked")
    assert path.startswith(str(lora_folder / "output" / "checkpoints"))
    sd = safetensors.torch.load_file(path)
    for p, m in modules.items():
        assert_close_relative(sd["model.diffusion_model." + p + ".weight"].float(),
                              base[p + ".weight"] + STRENGTH * m.delta(), 1e-6)  # float32 rounding, saved in fp32
    untouched = "output_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(sd["model.diffusion_model." + untouched].float(), base[untouched])
    assert any(k.startswith("conditioner.embedders.1.") for k in sd) and any(k.startswith("first_stage_model.") for k in sd)


def test_peft_conversion_covers_every_full_size_sdxl_attention_weight():
    cfg = comfy.supported_models.SDXL(dict(SDXL_UNET))
    model = cfg.get_model({}, device="meta")
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    attention = {k for k in model.state_dict()
                 if re.fullmatch(r"diffusion_model\..*\.attn[12]\.to_(q|k|v|out\.0)\.weight", k)}
    peft = {}
    for name in sdxl_attention_modules():
        peft[f"unet.{name}.lora_A.weight"] = torch.empty(0)
        peft[f"unet.{name}.lora_B.weight"] = torch.empty(0)
    assert not any(k.rsplit(".lora_", 1)[0] in key_map for k in peft)  # ComfyUI itself ignores these names
    targets = [key_map[k[:-len(".lora_down.weight")]] for k in convert_peft(peft) if k.endswith(".lora_down.weight")]
    assert len(attention) == 560 and len(targets) == 560 and set(targets) == attention


def test_nodes_are_valid_v3_nodes():
    for cls in NODES:
        cls.GET_SCHEMA()
        cls.VALIDATE_CLASS()
    assert {cls.GET_SCHEMA().node_id for cls in NODES} == {
        "SUPIRLoraStack", "SUPIRLoraInspect", "SUPIRLoraMerge", "SUPIRSaveBakedCheckpoint", "SUPIRLoraRegionBlend"}


def test_lora_nodes_refuse_malicious_and_damaged_files_by_name(tiny_model, lora_folder):
    folder = lora_folder / "loras"
    lora = file_for(modules_for(tiny_model), "kohya")
    for name, path in malicious_files(str(folder), lora).items():
        with pytest.raises(UnsafeWeightsError, match=f"{re.escape(path)}: refused to load.*Do not use this file"):
            run_node(SUPIRLoraInspect, lora_name=os.path.basename(path))
    assert not (folder / "ran").exists()
    good = str(folder / "good.pt")
    torch.save(lora, good)
    for path in damaged_files(str(folder), good).values():
        with pytest.raises(CorruptWeightsError, match=f"{re.escape(path)}: cannot be read.*Download it again"):
            run_node(SUPIRLoraInspect, lora_name=os.path.basename(path))
