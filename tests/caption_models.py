"""Tiny vision-language model folders for the caption tests, one per supported family, written as the model hub
ships them (config.json, safetensors weights, tokenizer, processor and chat-template files) from a config made here,
with seeded random weights and a word-level tokenizer built from scratch: nothing is downloaded."""
from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

WORDS = ("a an the photo of with and in on is red green blue grey sky tree house dog cat person road water sand "
         "stone wall window light dark old new small large , . user assistant describe image very detailed manner if "
         "we remove degradation artifacts from").split()
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=1024)
# A chat template of each shape the families ship: the image placeholder is the family's, the rest is plain text
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}IMAGE"
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:"
            "{% endif %}")


def tiny_tokenizer(special: dict[str, str], extra: tuple = (), chat_template: str | None = None):
    """A word-level tokenizer over WORDS and the family's special tokens (``special``: attribute -> token, e.g.
    ``image_token``), in transformers' fast-tokenizer format."""
    tokens = list(dict.fromkeys(["<unk>", "<pad>", "<s>", "</s>", *extra, *special.values()]))
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens + WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece()  # joins the words with spaces
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        extra_special_tokens=special, chat_template=chat_template)
    wrapped.add_tokens(list(extra), special_tokens=True)
    return wrapped


def text_config(tokenizer, **extra) -> dict:
    return dict(TINY_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def clip_vision(image_size: int = 28) -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=image_size, patch_size=14,
                                         projection_dim=16)


def llava():
    tokenizer = tiny_tokenizer({"image_token": "<image>"}, chat_template=TEMPLATE.replace("IMAGE", "<image>\n"))
    config = transformers.LlavaConfig(vision_config=clip_vision(), text_config=text_config(tokenizer),
                                      image_token_id=tokenizer.image_token_id)
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 28},
                                                         crop_size={"height": 28, "width": 28})
    processor = transformers.LlavaProcessor(image_processor, tokenizer, patch_size=14,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            chat_template=tokenizer.chat_template)
    return transformers.LlavaForConditionalGeneration, config, processor


def llava_next():
    tokenizer = tiny_tokenizer({"image_token": "<image>"}, chat_template=TEMPLATE.replace("IMAGE", "<image>\n"))
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = transformers.LlavaNextConfig(vision_config=clip_vision(), text_config=text_config(tokenizer),
                                          image_token_id=tokenizer.image_token_id, image_grid_pinpoints=pinpoints)
    image_processor = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 28},
                                                              crop_size={"height": 28, "width": 28},
                                                              image_grid_pinpoints=pinpoints)
    processor = transformers.LlavaNextProcessor(image_processor, tokenizer, patch_size=14,
                                                vision_feature_select_strategy="default",
                                                num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    return transformers.LlavaNextForConditionalGeneration, config, processor


QWEN_SPECIAL = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"}


def qwen(model_class, config_class, processor_class, vision: dict, patch: int, **text):
    """The Qwen VL families: multimodal RoPE over (time, height, width) and patches merged 2 x 2."""
    tokenizer = tiny_tokenizer(QWEN_SPECIAL, extra=("<|im_start|>", "<|im_end|>"), chat_template=TEMPLATE.replace(
        "IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in
           [("image_token", "<|image_pad|>"), ("video_token", "<|video_pad|>"),
            ("vision_start_token", "<|vision_start|>"), ("vision_end_token", "<|vision_end|>")]}
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    config = config_class(text_config=text_config(tokenizer, rope_parameters={**rope, **text.pop("rope", {})}, **text),
                          vision_config=dict(depth=2, num_heads=2, patch_size=patch, spatial_merge_size=2,
                                             temporal_patch_size=2, **vision), **ids)
    image_processor = transformers.Qwen2VLImageProcessorPil(min_pixels=(2 * patch) ** 2, max_pixels=(4 * patch) ** 2,
                                                            patch_size=patch, merge_size=2, temporal_patch_size=2)
    return model_class, config, image_only_processor(processor_class, image_processor, tokenizer)


def image_only_processor(processor_class, image_processor, tokenizer):
    from supir_restore.supir.caption.model import image_only
    return image_only(processor_class)(image_processor, tokenizer, chat_template=tokenizer.chat_template)


def qwen2_vl():
    return qwen(transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLConfig,
                transformers.Qwen2VLProcessor, dict(embed_dim=16, hidden_size=32, mlp_ratio=2, in_chans=3), 14)


def qwen2_5_vl():
    return qwen(transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig,
                transformers.Qwen2_5_VLProcessor,
                dict(hidden_size=16, intermediate_size=32, out_hidden_size=32, window_size=56,
                     fullatt_block_indexes=[1], in_channels=3), 14)


def qwen3_vl():
    return qwen(transformers.Qwen3VLForConditionalGeneration, transformers.Qwen3VLConfig,
                transformers.Qwen3VLProcessor,
                dict(hidden_size=16, intermediate_size=32, out_hidden_size=32, num_position_embeddings=16,
                     deepstack_visual_indexes=[1], in_channels=3), 16, head_dim=16, rope={"mrope_interleaved": True})


def idefics3_tokenizer():
    """A tokenizer with Idefics3's (SmolVLM's) image, row/column and end-of-utterance tokens."""
    special = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
               "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"}
    rows = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    return tiny_tokenizer(special, extra=rows, chat_template=TEMPLATE.replace("IMAGE", "<image>"))


def idefics3():
    """Idefics3, the class of SmolVLM (256M, 500M, 2B): 28 px images of 2 x 2 patches, pixel-shuffled to 1 token."""
    tokenizer = idefics3_tokenizer()
    config = transformers.Idefics3Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
        text_config=text_config(tokenizer), scale_factor=2, image_token_id=tokenizer.image_token_id)
    image_processor = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 56},
                                                             max_image_size={"longest_edge": 28})
    processor = transformers.Idefics3Processor(image_processor, tokenizer, image_seq_len=1,
                                               chat_template=tokenizer.chat_template)
    return transformers.Idefics3ForConditionalGeneration, config, processor


def florence2():
    """Florence-2: a DaViT image encoder and a BART encoder-decoder that takes task prompts."""
    tokenizer = tiny_tokenizer({"image_token": "<image>"}, extra=("<MORE_DETAILED_CAPTION>",))
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                  window_size=2, projection_dim=32, max_position_embeddings=8, drop_path_rate=0.0)
    text = dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                forced_eos_token_id=None)
    # untied output layer: a tiny tied one repeats the decoder's start token (the end token) at once
    config = transformers.Florence2Config(vision_config=vision, text_config=text, tie_word_embeddings=False,
                                          image_token_id=tokenizer.image_token_id)
    image_processor = transformers.CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False,
                                                         image_seq_length=17)  # 4 x 4 + 1 image features
    processor = transformers.Florence2Processor(image_processor, tokenizer)
    return transformers.Florence2ForConditionalGeneration, config, processor


BUILDERS = {"llava": llava, "llava_next": llava_next, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl,
            "qwen3_vl": qwen3_vl, "idefics3": idefics3, "florence2": florence2}


def write_tiny_vlm(model_type: str, folder, seed: int = 0) -> str:
    """A tiny model of ``model_type`` with weights seeded by ``seed``, saved in ``folder`` as the hub ships it."""
    model_class, config, processor = BUILDERS[model_type]()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)
