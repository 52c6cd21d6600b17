"""StableSR nodes: load the SR parts of a StableSR checkpoint, apply them to ComfyUI's SD 2.x MODEL, its prompts,
schedules and samplers, and the all-in-one StableSR Restore."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..supir.checks import check_finite_image, check_finite_latent
from ..supir.host.auto_tiles import TILES_CHOICES, check_tiles
from ..supir.host.stablesr import apply_stablesr, load_stablesr
from ..supir.host.stablesr_restore import (restore_stablesr, stablesr_conditioning, stablesr_sampler,
                                           stablesr_sigmas)
from ..supir.host.stablesr_upscale import stablesr_upscale
from ..supir.host.upscale import COLOUR_FIX_CHOICES
from ..supir.image.resize import RESIZE_METHODS
from ..supir.stablesr.sampling import (NEGATIVE_PROMPT, SAMPLERS, STABLESR_PRESETS, START_MODES, StableSRSettings)
from ..supir.weights import STORAGE_DTYPES
from .cfw_nodes import CFWType
from .image_nodes import COLOUR_FIX_TOOLTIP

StableSRModelType = io.Custom("STABLESR_MODEL")
CATEGORY = "supir/stablesr"
DEFAULT = STABLESR_PRESETS["DDPM 200 (official)"]


def stablesr_file_names() -> list[str]:
    """Every file in models/stablesr, then the files in models/checkpoints named like a StableSR checkpoint (the
    same file also loads there as SD 2.x through Load Checkpoint)."""
    names = folder_paths.get_filename_list("stablesr")
    return names + [n for n in folder_paths.get_filename_list("checkpoints")
                    if "stablesr" in n.lower() and n not in names]


def stablesr_file_path(name: str) -> str:
    return folder_paths.get_full_path("stablesr", name) or folder_paths.get_full_path_or_raise("checkpoints", name)


def _steps(default: int):
    return io.Int.Input("steps", default=default, min=2, max=1000,
                        tooltip="Number of steps (official: 200 DDPM; 4 for Turbo; 50 or 20 DDIM).")


def _sampler():
    return io.Combo.Input("sampler", options=list(SAMPLERS), default="ddpm",
                          tooltip="ddpm: the official respaced DDPM (ancestral). ddim: the official DDIM of the "
                                  "negative-prompt script.")


def _start():
    return io.Combo.Input("start", options=list(START_MODES), default="lr_latent",
                          tooltip="lr_latent: the LR latent noised to the first step (official DDPM scripts). "
                                  "noise: pure noise (official DDIM script, and the single-crop script).")


def _eta():
    return io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                          tooltip="DDIM only: 0 is deterministic, 1 adds the DDPM posterior's noise.")


class StableSRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRLoader", display_name="StableSR Load Model", category=CATEGORY,
            description="Loads StableSR's own parts (the time-aware encoder and the SPADE layers of every UNet "
                        "ResBlock) from a StableSR checkpoint in models/stablesr (files in models/checkpoints named "
                        "*stablesr* are listed too). Load the SD 2.x UNet, CLIP and VAE with Load Checkpoint (the "
                        "StableSR file itself, or the SD 2.1 checkpoint it was trained on).",
            inputs=[
                io.Combo.Input("stablesr_name", options=stablesr_file_names(),
                               tooltip="stablesr_000117.ckpt (SD 2.1-512), stablesr_768v_000139.ckpt (SD 2.1-768-v) "
                                       "or stablesr_turbo.ckpt, in ComfyUI/models/stablesr."),
                io.Combo.Input("weight_dtype", options=["auto", *STORAGE_DTYPES], default="auto",
                               tooltip="Storage precision of the encoder and SPADE layers. auto follows ComfyUI's "
                                       "choice for the device."),
            ],
            outputs=[StableSRModelType.Output(display_name="stablesr", tooltip="The loaded StableSR parts.")],
        )

    @classmethod
    def execute(cls, stablesr_name, weight_dtype) -> io.NodeOutput:
        return io.NodeOutput(load_stablesr(stablesr_file_path(stablesr_name), weight_dtype))


class ApplyStableSR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyStableSR", display_name="StableSR Apply", category=CATEGORY,
            description="Patches the SD 2.x MODEL with StableSR: at every model call the time-aware encoder reads "
                        "the LR latent at the call's timestep and SPADE modulates all 22 ResBlocks. Works with "
                        "every sampler, LoRA and SUPIR Tiled Aggregation; sample a latent of the LR latent's size.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.x model (Load Checkpoint), after any LoRA loaders."),
                StableSRModelType.Input("stablesr", tooltip="From StableSR Load Model."),
                io.Latent.Input("lr_latent", tooltip="VAE Encode of the upscaled low-resolution image (the SD 2.x "
                                                     "VAE), at the size to restore at."),
            ],
            outputs=[io.Model.Output(tooltip="The StableSR-patched model.")],
        )

    @classmethod
    def execute(cls, model, stablesr, lr_latent) -> io.NodeOutput:
        check_finite_latent(lr_latent["samples"], "lr_latent")
        return io.NodeOutput(apply_stablesr(model, stablesr, lr_latent["samples"]))


class StableSRConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRConditioning", display_name="StableSR Conditioning", category=CATEGORY,
            description="StableSR's prompts: an empty positive prompt (as it was trained) and, for the DDIM "
                        "negative-prompt path, the official negative prompt in the negative slot. Passed literally "
                        "as the official scripts do: (word:2) is text, not a ComfyUI weight.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SD 2.x CLIP (from Load Checkpoint)."),
                io.String.Input("positive", multiline=True, default="",
                                tooltip="Empty in the official scripts; '(masterpiece:2), (best quality:2), "
                                        "(realistic:2), (very clear:2)' with their --use_posi_prompt."),
                io.String.Input("negative", multiline=True, default=NEGATIVE_PROMPT,
                                tooltip="Used by samplers with cfg above 1 (the DDIM presets)."),
                io.Boolean.Input("literal", default=True,
                                 tooltip="On: parentheses are text, as in the official scripts. Off: ComfyUI's "
                                         "(word:weight) emphasis."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="The positive conditioning."),
                     io.Conditioning.Output(display_name="negative", tooltip="The negative conditioning.")],
        )

    @classmethod
    def execute(cls, clip, positive, negative, literal) -> io.NodeOutput:
        return io.NodeOutput(*stablesr_conditioning(clip, positive, negative, literal))


class StableSRSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRSigmas", display_name="StableSR Sigmas", category=CATEGORY,
            description="StableSR's schedules on the model's training sigmas: ddpm at the official respaced "
                        "timesteps round(k*999/(N-1)) (ComfyUI's 'normal' scheduler is exact only for 4 steps), "
                        "ddim at the DDIM script's timesteps. For SamplerCustomAdvanced with StableSR Sampler.",
            inputs=[io.Model.Input("model", tooltip="The model to sample (its sigma table is used)."),
                    _steps(DEFAULT.steps), _sampler()],
            outputs=[io.Sigmas.Output(tooltip="The sigmas, ending in 0.")],
        )

    @classmethod
    def execute(cls, model, steps, sampler) -> io.NodeOutput:
        return io.NodeOutput(stablesr_sigmas(model, steps, sampler))


class StableSRSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRSampler", display_name="StableSR Sampler", category=CATEGORY,
            description="StableSR's DDPM or DDIM with the official start, for SamplerCustomAdvanced (use StableSR "
                        "Sigmas of the same sampler, and the LR latent as the latent).",
            inputs=[_sampler(), _start(), _eta()],
            outputs=[io.Sampler.Output(tooltip="The sampler, for SamplerCustomAdvanced (or any SAMPLER input).")],
        )

    @classmethod
    def execute(cls, sampler, start, eta) -> io.NodeOutput:
        return io.NodeOutput(stablesr_sampler(sampler, start, eta))


class StableSRRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRRestore", display_name="StableSR Restore (Sampler)", category=CATEGORY,
            description="Samples a StableSR restoration at the LR latent's size with the official settings: DDPM "
                        "200 steps from the noised LR latent; Turbo DDPM 4 (stablesr_turbo); DDIM with the "
                        "negative prompt and CFG 7 from pure noise. Custom uses the values below. Decode with "
                        "StableSR CFW Decode or VAE Decode.",
            inputs=[
                io.Model.Input("model", tooltip="The StableSR-patched model (StableSR Apply, then optionally SUPIR "
                                                "Tiled Aggregation)."),
                io.Conditioning.Input("positive", tooltip="From StableSR Conditioning."),
                io.Conditioning.Input("negative", tooltip="From StableSR Conditioning (used when cfg is above 1)."),
                io.Latent.Input("lr_latent", tooltip="The LR latent given to StableSR Apply: sets the size and the "
                                                     "lr_latent start."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the initial and the injected noise."),
                io.Combo.Input("preset", options=[*STABLESR_PRESETS, "Custom"], default="DDPM 200 (official)",
                               tooltip="Official settings; Custom uses sampler, steps, start, cfg and eta below."),
                _sampler(), _steps(DEFAULT.steps), _start(),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Custom only: CFG scale against the negative prompt (1: none, as the DDPM "
                                       "scripts; 7 in the DDIM script)."),
                _eta(),
            ],
            outputs=[io.Latent.Output(tooltip="The restored latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, lr_latent, seed, preset, sampler, steps, start, cfg,
                eta) -> io.NodeOutput:
        settings = STABLESR_PRESETS.get(preset) or StableSRSettings(sampler, steps, start, cfg, eta)
        check_finite_latent(lr_latent["samples"], "lr_latent")
        return io.NodeOutput({"samples": restore_stablesr(model, positive, negative, lr_latent["samples"], seed,
                                                          settings)})


class StableSRUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StableSRUpscale", display_name="StableSR Upscale", category=CATEGORY,
            description="Upscales and restores in one node as StableSR's tiled script does: upscale (at least one "
                        "tile on the short side), encode, StableSR Apply, tiled aggregation for large images, a "
                        "preset restore, decode, colour fix against the upscaled image, and a final resize to "
                        "exactly scale x the input size.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 2.x model (Load Checkpoint on the StableSR or SD 2.1 file)."),
                io.Clip.Input("clip", tooltip="The SD 2.x CLIP (from Load Checkpoint)."),
                io.Vae.Input("vae", tooltip="The SD 2.x VAE (from Load Checkpoint)."),
                StableSRModelType.Input("stablesr", tooltip="From StableSR Load Model."),
                io.Image.Input("image", tooltip="The low-resolution image."),
                io.Float.Input("scale", default=4.0, min=1.0, max=8.0, step=0.05,
                               tooltip="Output size = input size x scale, exactly."),
                io.Combo.Input("preset", options=list(STABLESR_PRESETS), default="DDPM 200 (official)",
                               tooltip="Official sampling settings; use Turbo DDPM 4 with stablesr_turbo.ckpt."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Noise seed; the same seed gives the same result."),
                io.Int.Input("tile_size", default=512, min=64, max=4096, step=64,
                             tooltip="With tiles = manual: tile size in pixels (512: StableSR's; 768 for the 768v "
                                     "model), also the CFW decode's tile. Small inputs "
                                     "are upscaled to at least one tile."),
                io.Int.Input("tile_stride", default=256, min=8, max=4096, step=8,
                             tooltip="With tiles = manual: distance between tiles in pixels (official overlap 32 "
                                     "latent px = stride "
                                     "256 for 512 tiles)."),
                io.Combo.Input("colour_fix", options=list(COLOUR_FIX_CHOICES), default="adain",
                               tooltip="Colour correction against the upscaled input (adain for 200 steps, wavelet "
                                       "for Turbo and DDIM, as StableSR's README; none: no correction). "
                                       + COLOUR_FIX_TOOLTIP),
                io.Combo.Input("resize_method", options=list(RESIZE_METHODS), default="bicubic",
                               tooltip="Interpolation of the upscale (official: bicubic) and the final resize."),
                CFWType.Input("cfw", optional=True,
                              tooltip="From StableSR Load CFW: decode with controllable feature wrapping (the "
                                      "official pipeline). Without it, the plain VAE decode."),
                io.Float.Input("cfw_w", default=0.5, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="CFW fidelity weight: 0 the plain decode, 1 closest to the input; 0.5 is "
                                       "StableSR's default."),
                io.Combo.Input("tiles", options=list(TILES_CHOICES), default="auto", optional=True,
                               tooltip="auto: the largest sampling tiles (stride half the tile; at most StableSR's "
                                       "official 512 px, 768 px for the 768-v model) and CFW decode tiles whose "
                                       "predicted memory fits the device's free memory, the whole image when it "
                                       "fits; small inputs are upscaled to at least 512 px. The choice is "
                                       "logged. manual: tile_size and tile_stride."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The restored image at input size x scale."),
                     io.Image.Output(display_name="lr_image", tooltip="The upscaled input it was restored from.")],
        )

    @classmethod
    def execute(cls, model, clip, vae, stablesr, image, scale, preset, seed, tile_size, tile_stride, colour_fix,
                resize_method, cfw=None, cfw_w=0.5, tiles="manual") -> io.NodeOutput:
        check_finite_image(image, "image")
        check_tiles(tiles)
        auto = tiles == "auto"
        return io.NodeOutput(*stablesr_upscale(model, clip, vae, stablesr, image, scale, preset, seed,
                                               None if auto else tile_size, None if auto else tile_stride,
                                               colour_fix, resize_method, cfw, cfw_w))


NODES = [StableSRLoader, ApplyStableSR, StableSRConditioning, StableSRSigmas, StableSRSamplerNode, StableSRRestore, StableSRUpscale]
