"""SUPIR Upscale & Restore: the whole pipeline in one node for artists who want a single box."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.checks import check_finite_image
from ..supir.host.auto_tiles import TILES_CHOICES, check_tiles
from ..supir.host.upscale import COLOUR_FIX_CHOICES, upscale_and_restore
from ..supir.image.resize import MULTIPLES, RESIZE_METHODS
from ..supir.sampling.samplers import RESTORE_PRESETS
from .image_nodes import COLOUR_FIX_TOOLTIP
from .supir_nodes import SUPIRModelType


class SUPIRUpscaleRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRUpscaleRestore", display_name="SUPIR Upscale & Restore", category="supir",
            description="Upscales and restores in one node: resize, stage-1 encode, SUPIR Apply Control, SUPIR's prompts, "
                        "tiled aggregation for large images, a preset restore, decode, colour fix against the "
                        "stage-1 image and a final resize to exactly scale x the input size.",
            inputs=[
                io.Model.Input("model", tooltip="SDXL model (from Load Checkpoint, after any LoRA loaders)."),
                io.Clip.Input("clip", tooltip="SDXL text encoders (from Load Checkpoint)."),
                io.Vae.Input("vae", tooltip="SDXL VAE (from Load Checkpoint)."),
                SUPIRModelType.Input("supir", tooltip="From SUPIR Load Model."),
                io.Image.Input("image", tooltip="The low-quality image."),
                io.Float.Input("scale", default=2.0, min=0.25, max=8.0, step=0.05,
                               tooltip="Output size = input size x scale (exactly, after restoring at the nearest "
                                       "multiple of 'multiple')."),
                io.String.Input("caption", multiline=True, default="",
                                tooltip="What the photo shows (optional); the quality words are added."),
                io.Combo.Input("preset", options=list(RESTORE_PRESETS), default="Quality",
                               tooltip="Official sampling settings; Lightning presets need a Lightning SDXL."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same result."),
                io.Float.Input("control_scale_end", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="SUPIR control strength at the end of sampling (1.0 fidelity, ~0.9 detail)."),
                io.Int.Input("tile_size", default=1024, min=256, max=8192, step=64,
                             tooltip="With tiles = manual: tile size in pixels for tiled aggregation (one tile "
                                     "when the image fits)."),
                io.Int.Input("tile_stride", default=512, min=64, max=8192, step=64,
                             tooltip="With tiles = manual: distance between tiles in pixels; at most tile_size."),
                io.Combo.Input("colour_fix", options=list(COLOUR_FIX_CHOICES), default="wavelet",
                               tooltip="Colour correction against the stage-1 image (official: wavelet; none: "
                                       "no correction). " + COLOUR_FIX_TOOLTIP),
                io.Combo.Input("multiple", options=[str(m) for m in MULTIPLES], default="64",
                               tooltip="Sampling sizes are rounded to this multiple (64 as the official scripts)."),
                io.Combo.Input("resize_method", options=list(RESIZE_METHODS), default="lanczos",
                               tooltip="Interpolation for the upscale and the final resize."),
                io.Int.Input("vae_tile_size", default=0, min=0, max=8192, step=64,
                             tooltip="With tiles = manual. 0: whole-image VAE. Above 0: ComfyUI's tiled VAE with "
                                     "tiles of this many pixels, for very large images."),
                io.Combo.Input("tiles", options=list(TILES_CHOICES), default="auto", optional=True,
                               tooltip="auto: the largest sampling tiles (stride half the tile; at most 1024 px, "
                                       "SUPIR's official tile, unless the whole image fits) and VAE tiles whose "
                                       "predicted memory fits the device's free memory; the whole image when it "
                                       "fits. The choice is logged. manual: tile_size, tile_stride and "
                                       "vae_tile_size."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The restored image at input size x scale."),
                     io.Image.Output(display_name="stage1_image", tooltip="The stage-1 (denoised LQ) image.")],
        )

    @classmethod
    def execute(cls, model, clip, vae, supir, image, scale, caption, preset, seed, control_scale_end, tile_size,
                tile_stride, colour_fix, multiple, resize_method, vae_tile_size, tiles="manual") -> io.NodeOutput:
        check_finite_image(image, "image")
        check_tiles(tiles)
        auto = tiles == "auto"
        restored, stage1 = upscale_and_restore(model, clip, vae, supir, image, scale, caption, preset, seed,
                                               control_scale_end, None if auto else tile_size,
                                               None if auto else tile_stride, colour_fix, int(multiple),
                                               resize_method, None if auto else vae_tile_size)
        return io.NodeOutput(restored, stage1)


NODES = [SUPIRUpscaleRestore]
