"""StableSR's CFW decode nodes: load the CFW file, decode a latent with the LR image's features fused in."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..supir.checks import check_finite_image, check_finite_latent
from ..supir.host.auto_tiles import TILES_CHOICES, check_tiles
from ..supir.host.cfw_decode import TILED_VAES, VAE_WEIGHTS, cfw_decode, load_cfw

CFWType = io.Custom("STABLESR_CFW")
CATEGORY = "supir/stablesr"


class StableSRLoadCFW(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRLoadCFW",
            display_name="StableSR Load CFW",
            category=CATEGORY,
            description="Loads StableSR's CFW file (vqgan_cfw_00011.ckpt) from models/stablesr: the fusion layers "
                        "of its controllable feature wrapping, and the SD 2.1 VAE weights it was trained with.",
            inputs=[io.Combo.Input("cfw_name", options=folder_paths.get_filename_list("stablesr"),
                                   tooltip="The CFW file in ComfyUI/models/stablesr (vqgan_cfw_00011.ckpt).")],
            outputs=[CFWType.Output(display_name="cfw", tooltip="The loaded CFW fusion layers, for StableSR CFW "
                                                                "Decode.")],
        )

    @classmethod
    def execute(cls, cfw_name) -> io.NodeOutput:
        return io.NodeOutput(load_cfw(folder_paths.get_full_path_or_raise("stablesr", cfw_name)))


class StableSRCFWDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRCFWDecode",
            display_name="StableSR CFW Decode",
            category=CATEGORY,
            description="Decodes StableSR's restored latent with controllable feature wrapping: the upscaled LR "
                        "image's VAE encoder features are fused into the decoder, trading generated detail for "
                        "fidelity to the input. w = 0 is the plain VAE decode.",
            inputs=[
                io.Latent.Input("samples", tooltip="The restored latent from the sampler."),
                io.Vae.Input("vae", tooltip="The SD 2.1 VAE (from the SD 2.1 checkpoint StableSR runs on)."),
                CFWType.Input("cfw", tooltip="From StableSR Load CFW."),
                io.Image.Input("lr_image", tooltip="The upscaled LR image StableSR restored (the one you encoded for "
                                                   "sampling): the latent's size times 8."),
                io.Float.Input("w", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Fidelity weight: out = decoder + w * fusion. 0 is the plain VAE decode "
                                       "(most generated detail), 1 follows the LR image most; 0.5 is StableSR's "
                                       "default."),
                io.Combo.Input("vae_weights", options=list(VAE_WEIGHTS), default="cfw_file",
                               tooltip="The encoder and decoder weights. cfw_file: the CFW file's own (the SD 2.1 "
                                       "VAE it was trained with); vae: the connected VAE's as loaded."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64,
                             tooltip="0 decodes the whole image at once. From 64 up (pixels): tiles of this size, "
                                     "for large images (memory bounded by the tile)."),
                io.Combo.Input("tiled_vae", options=list(TILED_VAES), default="blend", optional=True,
                               tooltip="With tile_size above 0. blend: overlapping tiles blended together, fast; "
                                       "each tile is normalised on its own, so small tiles can show seams. exact: "
                                       "whole-image normalisation and attention, equal to the untiled decode; many "
                                       "times slower, and each tile needs room for its halo."),
                io.Combo.Input("tiles", options=list(TILES_CHOICES), default="manual", optional=True,
                               tooltip="auto: the whole image when it fits the device's free memory, else the "
                                       "largest tile that does (predicted from ComfyUI's VAE estimates; the choice "
                                       "is logged); tile_size is then unused. manual: tile_size."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image.")],
        )

    @classmethod
    def execute(cls, samples, vae, cfw, lr_image, w, vae_weights, tile_size, tiled_vae="blend",
                tiles="manual") -> io.NodeOutput:
        check_finite_latent(samples["samples"], "samples")
        check_finite_image(lr_image, "lr_image")
        check_tiles(tiles)
        return io.NodeOutput(cfw_decode(cfw, vae, samples["samples"], lr_image, w, vae_weights,
                                        None if tiles == "auto" else tile_size, tiled_vae))


NODES = [StableSRLoadCFW, StableSRCFWDecode]
