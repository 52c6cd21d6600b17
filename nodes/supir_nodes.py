"""SUPIR core nodes: load a SUPIR file, encode the LQ image with its denoise encoder, apply SUPIR to an SDXL MODEL."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..supir.checks import check_finite_image, check_finite_latent
from ..supir.host.auto_tiles import TILES_CHOICES, check_tiles
from ..supir.host.lq_encode import TILED_VAES, encode_lq, lq_vae
from ..supir.host.supir_loader import load_supir
from ..supir.host.unet_patch import apply_supir
from ..supir.model.checkpoint import looks_like_supir
from ..supir.weights import STORAGE_DTYPES

SUPIRModelType = io.Custom("SUPIR_MODEL")
CATEGORY = "supir"


def supir_file_names() -> list[str]:
    """Every file in models/supir, then the SUPIR files in models/model_patches (where ComfyUI's own SUPIR
    loader looks)."""
    names = folder_paths.get_filename_list("supir")
    if "model_patches" in folder_paths.folder_names_and_paths:
        names += [n for n in folder_paths.get_filename_list("model_patches")
                  if n not in names and looks_like_supir(folder_paths.get_full_path("model_patches", n))]
    return names


def supir_file_path(name: str) -> str:
    return folder_paths.get_full_path("supir", name) or folder_paths.get_full_path_or_raise("model_patches", name)


class SUPIRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoader",
            display_name="SUPIR Load Model",
            category=CATEGORY,
            description="Loads a SUPIR file (SUPIR-v0Q or v0F, .ckpt or .safetensors) from models/supir (SUPIR files "
                        "in models/model_patches are listed too): the control trunk, the UNet adaptors and the "
                        "denoise encoder. The SDXL UNet, VAE and CLIP come from your SDXL checkpoint. SUPIR weights "
                        "are licensed for non-commercial use only.",
            inputs=[
                io.Combo.Input("supir_name", options=supir_file_names(),
                               tooltip="SUPIR checkpoint in ComfyUI/models/supir (or models/model_patches)."),
                io.Combo.Input("weight_dtype", options=["auto", *STORAGE_DTYPES], default="auto",
                               tooltip="Storage precision of the control network. auto follows ComfyUI's choice for "
                                       "the device; fp8_e4m3fn halves memory again and computes in a wider type."),
            ],
            outputs=[SUPIRModelType.Output(display_name="supir", tooltip="The loaded SUPIR model.")],
        )

    @classmethod
    def execute(cls, supir_name, weight_dtype) -> io.NodeOutput:
        return io.NodeOutput(load_supir(supir_file_path(supir_name), weight_dtype))


class SUPIRLQEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLQEncode",
            display_name="SUPIR LQ Encode",
            category=CATEGORY,
            description="Stage 1: encodes the low-quality image with SUPIR's degradation-robust denoise encoder. "
                        "The hint latent drives SUPIR Apply Control; the stage-1 image (its decode) is a preview and "
                        "the colour-fix reference. Sides that are not multiples of 8 are resized to the nearest multiple.",
            inputs=[
                SUPIRModelType.Input("supir", tooltip="From SUPIR Load Model."),
                io.Vae.Input("vae", tooltip="The SDXL VAE (from the SDXL checkpoint); its decoder is reused."),
                io.Image.Input("image", tooltip="The low-quality image, already at the size to restore at."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64,
                             tooltip="0 encodes the whole image at once. Above 0 (pixels): encode and decode tile "
                                     "by tile, for large images (memory bounded by the tile)."),
                io.Combo.Input("tiled_vae", options=list(TILED_VAES), default="comfy", optional=True,
                               tooltip="With tile_size above 0. comfy: ComfyUI's tiled VAE, fast; each tile is "
                                       "normalised on its own, so tiles that differ from the whole image (a flat "
                                       "sky, a dark corner) come out shifted and seams can show. exact: "
                                       "whole-image normalisation and attention, equal to the untiled VAE; "
                                       "about 10x (encode) to 20x (decode) the untiled time."),
                io.Combo.Input("tiles", options=list(TILES_CHOICES), default="manual", optional=True,
                               tooltip="auto: the whole image when it fits the device's free memory, else the "
                                       "largest tile that does (predicted from ComfyUI's VAE estimates; the choice "
                                       "is logged); tile_size is then unused. manual: tile_size."),
            ],
            outputs=[
                io.Latent.Output(display_name="hint", tooltip="LQ latent for SUPIR Apply Control (and for sizing the sampled latent)."),
                io.Image.Output(display_name="stage1_image", tooltip="Decode of the hint: the denoised, smooth stage-1 image."),
                io.Vae.Output(display_name="lq_vae", tooltip="A VAE with the denoise encoder and the SDXL decoder, "
                                                            "usable with the stock VAE Encode nodes (tiled too)."),
            ],
        )

    @classmethod
    def execute(cls, supir, vae, image, tile_size, tiled_vae="comfy", tiles="manual") -> io.NodeOutput:
        check_finite_image(image, "image")
        check_tiles(tiles)
        latent, stage1 = encode_lq(supir, vae, image, None if tiles == "auto" else tile_size, tiled_vae)
        return io.NodeOutput({"samples": latent}, stage1, lq_vae(supir, vae))


class ApplySUPIR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplySUPIR",
            display_name="SUPIR Apply Control",
            category=CATEGORY,
            description="Patches the SDXL MODEL with SUPIR: the control trunk reads the noisy latent and the hint "
                        "every step and its adaptors modulate the UNet's decoder. Works with every sampler, LoRA and "
                        "model patch; sample a latent of the hint's size.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model (after any LoRA loaders)."),
                SUPIRModelType.Input("supir", tooltip="From SUPIR Load Model."),
                io.Latent.Input("hint", tooltip="The hint from SUPIR LQ Encode."),
                io.Float.Input("control_scale_start", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Control strength at the highest noise level (sigma_max)."),
                io.Float.Input("control_scale_end", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Control strength as noise reaches 0; it moves linearly with sigma in between. "
                                       "1.0 for fidelity, about 0.9 for more generated detail."),
            ],
            outputs=[io.Model.Output(tooltip="The SUPIR-patched model, for KSampler or SUPIR samplers.")],
        )

    @classmethod
    def execute(cls, model, supir, hint, control_scale_start, control_scale_end) -> io.NodeOutput:
        check_finite_latent(hint["samples"], "hint")
        return io.NodeOutput(apply_supir(model, supir, hint["samples"], control_scale_start, control_scale_end))


NODES = [SUPIRLoader, SUPIRLQEncode, ApplySUPIR]
