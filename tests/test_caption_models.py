"""Tier 1: captions from a tiny model of every supported vision-language family (config, weights, tokenizer and
processor made here, saved as the hub ships them): loading through transformers' own classes, greedy decoding equal
to a step-by-step reference walk, seeded sampling, and the folders that must be refused."""
import os

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from caption_models import BUILDERS, write_tiny_vlm
from supir_restore.supir.caption.folder import VLMFolderError
from supir_restore.supir.caption.model import (DEFAULT_INSTRUCTION, caption_image, caption_images, load_vlm, one_line,
                                               steer)

INSTRUCTION = "describe the photo ."


def rgb(height: int, width: int, seed: int) -> torch.Tensor:
    """An IMAGE-layout (H, W, 3) of 8-bit levels, so that its PIL image is exact."""
    return torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed)) / 255.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {family: write_tiny_vlm(family, root / family, seed=1) for family in BUILDERS}


def reference_greedy(vlm, image: torch.Tensor, instruction: str, max_tokens: int) -> str:
    """Greedy decoding written out: the processor's inputs from the chat template (Florence-2: the text as it is),
    then the full model run once per new token, taking the most likely one, until the end token."""
    processor, model = vlm.processor, vlm.model
    text = instruction if vlm.model_type == "florence2" else processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}],
        chat_template=processor.chat_template, add_generation_prompt=True, tokenize=False)
    pil = Image.fromarray((image * 255).round().to(torch.uint8).numpy())
    inputs = dict(processor(images=[pil], text=[text], return_tensors="pt"))
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    new = []
    for _ in range(max_tokens):
        with torch.no_grad():
            if model.config.is_encoder_decoder:
                decoder = torch.tensor([[model.generation_config.decoder_start_token_id, *new]])
                logits = model(**inputs, decoder_input_ids=decoder).logits[0, -1]
            else:
                steps = len(new)
                ids = torch.cat([inputs["input_ids"], torch.tensor([new], dtype=torch.long)], dim=1)
                extra = {k: torch.cat([v, torch.full((1, steps), int(k == "attention_mask"), dtype=v.dtype)], dim=1)
                         for k, v in inputs.items() if k != "input_ids" and v.shape[:2] == inputs["input_ids"].shape}
                logits = model(**{**inputs, **extra, "input_ids": ids}).logits[0, -1]
        token = int(logits.argmax())
        if token in eos:
            break
        new.append(token)
    return " ".join(processor.tokenizer.decode(new, skip_special_tokens=True).split())


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_each_family_loads_and_decodes_greedily_as_the_reference_walk(folders, family):
    vlm = load_vlm(folders[family])
    assert type(vlm.model).__name__ == {"llava": "LlavaForConditionalGeneration",
                                        "llava_next": "LlavaNextForConditionalGeneration",
                                        "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                        "qwen3_vl": "Qwen3VLForConditionalGeneration",
                                        "idefics3": "Idefics3ForConditionalGeneration",
                                        "florence2": "Florence2ForConditionalGeneration"}[family]
    assert vlm.processor.image_processor.backend == "pil"
    image = rgb(40, 52, seed=0)
    caption = caption_image(vlm, image, INSTRUCTION, max_tokens=6)
    assert caption, "the tiny model stopped at once: pick another seed so the walk compares something"
    assert caption == reference_greedy(vlm, image, INSTRUCTION, 6)
    assert caption_image(load_vlm(folders[family]), image, INSTRUCTION, max_tokens=6) == caption


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_sampling_is_reproduced_by_its_seed_and_leaves_the_global_generator_alone(folders, family):
    vlm = load_vlm(folders[family])
    image = rgb(36, 30, seed=1)
    state = torch.get_rng_state()
    sampled = [caption_image(vlm, image, INSTRUCTION, max_tokens=6, seed=s) for s in (5, 5, 6, 7)]
    assert torch.equal(torch.get_rng_state(), state)
    assert sampled[0] == sampled[1]
    assert len(set(sampled)) > 1  # the seed changes what is sampled


def test_min_tokens_fixes_the_length(folders):
    vlm = load_vlm(folders["llava"])
    tokens = vlm.processor.tokenizer(caption_image(vlm, rgb(28, 28, 2), INSTRUCTION, max_tokens=5, min_tokens=5),
                                     add_special_tokens=False)["input_ids"]
    assert len(tokens) == 5


def test_images_are_captioned_in_order_with_progress(folders):
    vlm = load_vlm(folders["qwen2_vl"])
    images = [rgb(28, 28 + 8 * i, seed=i) for i in range(3)]
    done = []
    captions = caption_images(vlm, images, INSTRUCTION, 4, None, done.append)
    assert done == [0, 1, 2]
    assert captions == [caption_image(vlm, image, INSTRUCTION, 4) for image in images]


def test_weights_in_another_layout_are_refused_before_captioning(folders, tmp_path):
    folder = tmp_path / "other_layout"
    folder.mkdir()
    source = folders["llava"]
    for name in os.listdir(source):
        (folder / name).write_bytes(open(os.path.join(source, name), "rb").read())
    weights = load_file(folder / "model.safetensors")
    save_file({k.replace("language_model", "llm"): v for k, v in weights.items()}, folder / "model.safetensors")
    with pytest.raises(VLMFolderError, match=r"other_layout: \d+ weights of transformers' "
                                             r"LlavaForConditionalGeneration are not in the files"):
        load_vlm(str(folder))


def test_a_folder_without_chat_template_is_refused(folders, tmp_path):
    folder = tmp_path / "no_template"
    folder.mkdir()
    source = folders["idefics3"]
    for name in os.listdir(source):
        if name != "chat_template.jinja":
            (folder / name).write_bytes(open(os.path.join(source, name), "rb").read())
    with pytest.raises(VLMFolderError, match="no_template: no chat template"):
        load_vlm(str(folder))


def test_captions_are_single_lines_steered_by_prefix_and_suffix():
    assert one_line(" a  dog\non the\tgrass \n") == "a dog on the grass"
    assert steer("a dog\non grass", "photo of", "sharp.") == "photo of a dog on grass sharp."
    assert steer("a dog", "", "") == "a dog" and steer("", "", "") == ""
    assert DEFAULT_INSTRUCTION == ("Describe the image in a very detailed manner if we remove the degradation "
                                   "artifacts from the image.")
