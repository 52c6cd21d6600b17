"""The semantic prior: captions of the LQ image, whole or per tile of the tiled aggregation, from a local
vision-language model, as text for SUPIR Conditioning."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.caption.model import DEFAULT_INSTRUCTION, steer
from ..supir.caption.tiles import LATENT_SCALE, tile_crops
from ..supir.checks import check_finite_image
from ..supir.image.io import as_rgb
from ..supir.host.caption import DTYPES, caption_with_progress, load_managed_vlm
from ..supir.tiling.grid import GRIDS, check_tile_pixels
from .folders import vlm_folders

VLMType = io.Custom("SUPIR_VLM")
CATEGORY = "supir/caption"
DECODING = ("greedy", "sample")


def vlm_folder_path(name: str) -> str:
    folders = vlm_folders()
    if name not in folders:
        raise ValueError(f"vision-language model '{name}' not found: put the model's folder (config.json, "
                         f"*.safetensors, tokenizer and processor files) in ComfyUI/models/vlm or ComfyUI/models/LLM")
    return folders[name]


class SUPIRLoadVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoadVLM", display_name="SUPIR Load VLM", category=CATEGORY,
            description="Loads a vision-language model folder from models/vlm or models/LLM in transformers' format "
                        "(LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM/Idefics3, Florence-2) with "
                        "transformers' own classes: local files only, safetensors only, never the model's own code. "
                        "ComfyUI's model management moves it to the GPU only while it captions.",
            inputs=[
                io.Combo.Input("model_name", options=sorted(vlm_folders()),
                               tooltip="A model folder in ComfyUI/models/vlm or ComfyUI/models/LLM (see README, "
                                       "'Captions', for the supported models and where to get them)."),
                io.Combo.Input("weight_dtype", options=["auto", *DTYPES], default="auto",
                               tooltip="Precision of the weights. auto: bf16 where the device runs it well, else "
                                       "fp16 where it does, else fp32 (the CPU)."),
            ],
            outputs=[VLMType.Output(display_name="vlm", tooltip="The loaded model, for SUPIR Caption (VLM).")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype) -> io.NodeOutput:
        return io.NodeOutput(load_managed_vlm(vlm_folder_path(model_name), weight_dtype))


class SUPIRCaptionVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRCaptionVLM", display_name="SUPIR Caption (VLM)", category=CATEGORY,
            description="Describes the low-quality image with a vision-language model, for SUPIR Conditioning's "
                        "caption (SUPIR's and SSP-IR's semantic prior). With tile_size 0 each image of the batch "
                        "gets one caption line; with a tile size, each tile of SUPIR Tiled Aggregation's grid gets "
                        "one, row by row, for per-tile captions (SUPIR Conditioning with caption_per_line into "
                        "the aggregation's tile_positive). The text can be edited before it is used.",
            inputs=[
                VLMType.Input("vlm", tooltip="From SUPIR Load VLM."),
                io.Image.Input("image", tooltip="The low-quality image. For per-tile captions: one image at the size "
                                                "it is restored at (SUPIR Resize For Restore's image), with its "
                                                "hint, so the tiles are the aggregation's."),
                io.String.Input("instruction", multiline=True, default=DEFAULT_INSTRUCTION,
                                tooltip="What the model is asked (SSP-IR's instruction by default). Florence-2 takes "
                                        "a task token instead, e.g. <MORE_DETAILED_CAPTION>."),
                io.Int.Input("max_tokens", default=128, min=1, max=2048,
                             tooltip="The longest caption in tokens; the model may stop earlier. CLIP reads about "
                                     "75 tokens per chunk; SUPIR Conditioning encodes longer text in chunks."),
                io.Combo.Input("decoding", options=list(DECODING), default=DECODING[0],
                               tooltip="greedy: the most likely word each step (the same caption every run). "
                                       "sample: sampled with the model's own settings from the seed."),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="The seed of sampling (every image or tile starts from it); unused by greedy."),
                io.String.Input("prefix", default="", tooltip="Text put before every caption, to steer the prompt."),
                io.String.Input("suffix", default="", tooltip="Text put after every caption, to steer the prompt."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=8,
                             tooltip="0: one caption per image. Otherwise SUPIR Tiled Aggregation's tile size in "
                                     "image pixels: one caption per tile (give both nodes the same tile size, "
                                     "stride and grid)."),
                io.Int.Input("tile_stride", default=512, min=8, max=8192, step=8,
                             tooltip="SUPIR Tiled Aggregation's tile stride in image pixels (used with a tile size)."),
                io.Combo.Input("grid", options=list(GRIDS), default="snapped",
                               tooltip="SUPIR Tiled Aggregation's grid (used with a tile size)."),
                io.Latent.Input("hint", optional=True,
                                tooltip="The image's hint from SUPIR LQ Encode (used with a tile size): the tiles "
                                        "are laid on its latent as the aggregation lays them. Without it, the "
                                        "latent is taken as the image size / 8 (an SDXL VAE)."),
            ],
            outputs=[
                io.String.Output(display_name="caption",
                                 tooltip="The captions, one line per image (or per tile, row by row): SUPIR "
                                         "Conditioning's caption, with caption_per_line for several lines."),
                io.String.Output(display_name="captions", is_output_list=True,
                                 tooltip="The same captions as a list: nodes after it run once per caption."),
            ],
        )

    @classmethod
    def execute(cls, vlm, image, instruction, max_tokens, decoding, seed, prefix, suffix, tile_size, tile_stride,
                grid, hint=None) -> io.NodeOutput:
        check_finite_image(image, "image")
        image = as_rgb(image)
        if tile_size:
            check_tile_pixels(tile_size, tile_stride)
            if image.shape[0] != 1:
                raise ValueError(f"per-tile captions describe the tiles of one image; got a batch of "
                                 f"{image.shape[0]}: caption each image on its own")
            latent = None if hint is None else tuple(hint["samples"].shape[-2:])
            images = [crop[0] for crop in tile_crops(image, tile_size // LATENT_SCALE, tile_stride // LATENT_SCALE,
                                                     grid, latent)]
        else:
            images = list(image)
        captions = caption_with_progress(vlm, images, instruction, max_tokens,
                                         None if decoding == "greedy" else seed)
        # an empty line would be dropped by caption_per_line and shift the captions after it
        lines = [steer(c, prefix, suffix) or "." for c in captions]
        return io.NodeOutput("\n".join(lines), lines)


NODES = [SUPIRLoadVLM, SUPIRCaptionVLM]
