"""The shipped workflows as graphs in API form (node id -> class, inputs, title, position); ``build.py`` turns
them into the UI and API files. Model file names are the official ones; change them in the loaders.

A graph is written with node names ("ckpt", "lq", …) that links refer to (``["lq", 0]``: output 0 of the node
named "lq"); :func:`numbered` turns the names into the ids 1, 2, … in the order the nodes are listed."""
from __future__ import annotations

from ..supir.stablesr.sampling import NEGATIVE_PROMPT
from .build import DECODE, LOAD, PROMPTS, RESTORE, SAVE, STAGE1, TRAIN

SDXL_BASE = "sd_xl_base_1.0_0.9vae.safetensors"
SDXL_LIGHTNING = "juggernautXL_v9Rdphoto2Lightning.safetensors"
SUPIR_Q = "SUPIR-v0Q.ckpt"
SUPIR_F = "SUPIR-v0F.ckpt"
DETAIL_LORA = "add-detail-xl.safetensors"  # Detail Tweaker XL, an SDXL LoRA that adds (or, below 0, removes) detail
STABLESR_512 = "stablesr_000117.ckpt"  # StableSR's checkpoint holds its SD 2.1-512 too: Load Checkpoint reads it
STABLESR_TURBO = "stablesr_turbo.ckpt"
STABLESR_CFW = "vqgan_cfw_00011.ckpt"
EXAMPLE_IMAGE = "example.png"
BENCHMARK_FOLDER = "benchmark"
TRAINING_FOLDER = "supir_training"
LORA_SLOTS = 4  # slots of SUPIR LoRA Stack and of each stack of SUPIR LoRA Region Blend
NO_LORA = "None"
VLM = "SmolVLM-256M-Instruct"  # a folder in ComfyUI/models/vlm (HuggingFaceTB/SmolVLM-256M-Instruct)
VAE_TILE = 512  # pixels: SUPIR's scripts encode in 512 px tiles and decode in 64-latent (512 px) tiles

NOTE_COLOR = {"color": "#432", "bgcolor": "#653"}
# (width, body height) of each node class: at least what ComfyUI 0.12.1's editor needs for the node's sockets and
# widgets (it would grow a smaller node onto its neighbour), images and text given room to read
SIZES = {"Note": (400, 250), "CheckpointLoaderSimple": (360, 110), "SUPIRLoader": (360, 90),
         "LoadImage": (360, 340), "SUPIRLoadVLM": (360, 90), "SUPIRLoraStack": (360, 280),
         "SUPIRLoraRegionBlend": (360, 470), "SUPIRLoadImageFolder": (360, 130), "SUPIRTrainingDataset": (360, 190),
         "StableSRLoader": (360, 90), "StableSRLoadCFW": (360, 70), "PrimitiveInt": (360, 90),
         "SUPIRResize": (340, 160), "SUPIRLQEncode": (340, 160), "PreviewImage": (340, 300), "VAEEncode": (340, 60),
         "SUPIRDegradeImage": (340, 140),
         "SUPIRConditioning": (420, 380), "SUPIRCaptionVLM": (420, 380), "StableSRConditioning": (420, 300),
         "ApplySUPIR": (340, 130), "ApplyStableSR": (340, 80), "SUPIRTiledAggregation": (340, 220),
         "SUPIRRestore": (340, 460), "StableSRRestore": (340, 300),
         "VAEDecode": (340, 60), "VAEDecodeTiled": (340, 160), "StableSRCFWDecode": (340, 230),
         "SUPIRColorFix": (340, 110), "SUPIRResizeTo": (340, 120),
         "SaveImage": (420, 420), "SUPIRBenchmarkReport": (400, 300), "SUPIRTrainLoRA": (420, 630)}

MODEL, CLIP, VAE = ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]
HINT, STAGE1_IMAGE = ["lq", 0], ["lq", 1]


def numbered(graph: dict[str, dict]) -> dict[str, dict]:
    """The graph with node names replaced by ids "1", "2", … in listed order, and its links renamed to match."""
    ids = {name: str(i) for i, name in enumerate(graph, 1)}

    def relink(value):
        return [ids[value[0]], value[1]] if isinstance(value, list) else value
    return {ids[name]: {**node, "inputs": {k: relink(v) for k, v in node["inputs"].items()}}
            for name, node in graph.items()}


def node(class_type: str, title: str, stage: str, size: tuple | None = None, **inputs) -> dict:
    """A node in the column of its ``stage`` (below the nodes listed before it there), ``size`` (width, body height)
    or its class's size in SIZES."""
    return {"class_type": class_type, "title": title, "inputs": inputs, "stage": stage,
            "size": size or SIZES[class_type]}


def note(text: str, stage: str = LOAD, title: str = "Read me") -> dict:
    """A note where the user must act (put model files, load an image, pick a model)."""
    return {**node("Note", title, stage, text=text), **NOTE_COLOR}


def models_note(ckpt: str, supir: str, lora: str | None = None) -> str:
    """Which model files the workflow expects and where they go."""
    places = [f"{ckpt} in ComfyUI/models/checkpoints", f"{supir} in ComfyUI/models/supir (SUPIR weights are "
              "licensed for non-commercial use only; never bundled)"]
    if lora:
        places.append(f"{lora} (or any SDXL LoRA) in ComfyUI/models/loras")
    return f"Models: {'; '.join(places)}. "


def loaders(ckpt: str, supir: str) -> dict:
    return {"ckpt": node("CheckpointLoaderSimple", "SDXL checkpoint", LOAD, ckpt_name=ckpt),
            "supir": node("SUPIRLoader", "SUPIR model", LOAD, supir_name=supir, weight_dtype="auto")}


def load_image() -> dict:
    return node("LoadImage", "Low-quality image", LOAD, image=EXAMPLE_IMAGE)


def lq_encode(image: list, tile_size: int = 0) -> dict:
    """SUPIR LQ Encode with automatic tiles: the whole image when it fits the GPU, else the largest tiles that do
    (``tile_size`` is then unused, and what a user switching to manual tiles starts from)."""
    return node("SUPIRLQEncode", "Stage 1: LQ encode", STAGE1, supir=["supir", 0], vae=VAE, image=image,
                tile_size=tile_size, tiles="auto")


def apply_supir(model: list, scale_end: float) -> dict:
    return node("ApplySUPIR", "SUPIR Apply Control", RESTORE, model=model, supir=["supir", 0], hint=HINT,
                control_scale_start=1.0, control_scale_end=scale_end)


def prompts(clip: list, caption: str | list = "", title: str = "Prompts") -> dict:
    return node("SUPIRConditioning", title, PROMPTS, clip=clip, caption=caption,
                positive_suffix=_POSITIVE, negative=_NEGATIVE, size_conditioning="1024 (official)",
                caption_per_line=False, hint=HINT)


def vlm_loader() -> dict:
    return node("SUPIRLoadVLM", "Vision-language model", LOAD, model_name=VLM, weight_dtype="auto")


def caption(image: list, title: str = "Caption", tile_size: int | list = 0, tile_stride: int | list = 512,
            hint: list | None = None) -> dict:
    """SUPIR Caption (VLM) of ``image`` with SSP-IR's instruction, greedy; per tile with a ``tile_size`` (and the
    image's ``hint``)."""
    return node("SUPIRCaptionVLM", title, PROMPTS, vlm=["vlm", 0], image=image, instruction=_INSTRUCTION,
                max_tokens=128, decoding="greedy", seed=0, prefix="", suffix="", tile_size=tile_size,
                tile_stride=tile_stride, grid="snapped", **({"hint": hint} if hint else {}))


def restore(model: list, preset: str) -> dict:
    return node("SUPIRRestore", "Stage 2: restore", RESTORE, model=model, positive=["prompts", 0],
                negative=["prompts", 1], hint=HINT, seed=0, preset=preset, start="noise", denoise=1.0,
                sampler="RestoreEDM", steps=50, s_churn=5.0, s_noise=1.003, eta=1.0, cfg_start=4.0, cfg_end=7.5,
                restore_cfg=-1.0, restore_cfg_s_tmin=0.05)


def decode() -> dict:
    return node("VAEDecode", "Decode", DECODE, samples=["restore", 0], vae=VAE)


def save(images: list) -> dict:
    return node("SaveImage", "Restored", SAVE, images=images, filename_prefix="supir/restored")


def preview_stage1() -> dict:
    return node("PreviewImage", "Stage-1 image", STAGE1, images=STAGE1_IMAGE)


def lora_slots(loras: list[tuple[str, float]], stack: str = "") -> dict:
    """The lora{stack}_i / strength{stack}_i widgets of every slot: ``loras`` (name, strength) first, then empty."""
    filled = [*loras, *[(NO_LORA, 1.0)] * (LORA_SLOTS - len(loras))]
    return {key: value for i, (name, strength) in enumerate(filled, 1)
            for key, value in ((f"lora{stack}_{i}", name), (f"strength{stack}_{i}", strength))}


def restore_graph(ckpt: str, supir: str, preset: str, scale_end: float, readme: str, model=MODEL, clip=CLIP,
                  caption_text: str | list = "", **extra: dict) -> dict:
    """Load → LQ encode → SUPIR Apply Control → conditioning → SUPIR Restore → decode → save (+ stage-1 preview).
    ``extra`` nodes come last; ``model`` / ``clip`` name what SUPIR Apply Control / the prompts take (e.g. an extra node)."""
    return numbered({
        "note": note(readme),
        **loaders(ckpt, supir),
        "image": load_image(),
        "lq": lq_encode(["image", 0]),
        "apply": apply_supir(model, scale_end),
        "prompts": prompts(clip, caption=caption_text),
        "restore": restore(["apply", 0], preset),
        "decode": decode(),
        "save": save(["decode", 0]),
        "preview": preview_stage1(),
        **extra,
    })


def lora_graph(readme: str) -> dict:
    """The restore graph with SUPIR LoRA Stack between the checkpoint and SUPIR Apply Control / the prompts."""
    stack = node("SUPIRLoraStack", "LoRA stack", LOAD, model=MODEL, clip=CLIP,
                 **lora_slots([(DETAIL_LORA, 1.0)]))
    return restore_graph(SDXL_BASE, SUPIR_Q, "Quality", 1.0, readme, model=["loras", 0], clip=["loras", 1],
                         loras=stack)


def lora_region_graph(readme: str) -> dict:
    """The restore graph with SUPIR LoRA Region Blend before SUPIR Apply Control, masked by the image's painted mask."""
    blend = node("SUPIRLoraRegionBlend", "LoRA region blend", RESTORE, model=MODEL, mask=["image", 1],
                 **lora_slots([(DETAIL_LORA, 1.0)], "_inside"),
                 **lora_slots([(DETAIL_LORA, -0.5)], "_outside"), feather=16)
    return restore_graph(SDXL_BASE, SUPIR_Q, "Quality", 1.0, readme, model=["region", 0], region=blend)


def upscale_graph(scale: float, readme: str, captions: bool = False) -> dict:
    """Load → SUPIR Resize For Restore → tiled LQ encode → SUPIR Apply Control → Tiled Aggregation → SUPIR Restore →
    tiled decode → Colour Fix (wavelet, against stage 1) → SUPIR Resize To Size (scale × input exactly) → save.
    ``captions``: a vision-language model captions the resized image (SUPIR Conditioning) and each tile (per-tile
    captions into the aggregation), with one tile size and stride for both."""
    graph = _upscale_nodes(scale, readme)
    if not captions:
        return numbered(graph)
    tile, stride = ["tile_px", 0], ["stride_px", 0]
    graph["tiles"]["inputs"].update(tile_size=tile, tile_stride=stride, tile_positive=["tile_prompts", 0],
                                    tiles="manual")  # the captions' tiles are these
    graph["prompts"]["inputs"]["caption"] = ["caption", 0]
    tile_prompts = prompts(CLIP, ["tile_caption", 0], "Per-tile prompts")
    tile_prompts["inputs"].update(caption_per_line=True)
    del tile_prompts["inputs"]["hint"]  # one caption per tile, not per image
    return numbered({
        **graph,
        "tile_px": node("PrimitiveInt", "Tile size (px)", RESTORE, value=1024),
        "stride_px": node("PrimitiveInt", "Tile stride (px)", RESTORE, value=512),
        "vlm": vlm_loader(),
        "caption": caption(["resize", 0], "Caption (whole image)"),
        "tile_caption": caption(["resize", 0], "Caption (per tile)", tile, stride, HINT),
        "tile_prompts": tile_prompts,
    })


def _upscale_nodes(scale: float, readme: str) -> dict:
    return {
        "note": note(readme),
        **loaders(SDXL_BASE, SUPIR_Q),
        "image": load_image(),
        "resize": node("SUPIRResize", "Resize for restore", STAGE1, image=["image", 0], scale_by=scale,
                       multiple="64", method="lanczos"),
        "lq": lq_encode(["resize", 0], VAE_TILE),
        "apply": apply_supir(MODEL, 1.0),
        "tiles": node("SUPIRTiledAggregation", "Tiled aggregation", RESTORE, model=["apply", 0], tile_size=1024,
                      tile_stride=512, grid="snapped", tile_batch_size=1, tiles="auto"),
        "prompts": prompts(CLIP),
        "restore": restore(["tiles", 0], "Quality"),
        "decode": node("VAEDecodeTiled", "Decode (tiled)", DECODE, samples=["restore", 0], vae=VAE,
                       tile_size=VAE_TILE, overlap=64, temporal_size=64, temporal_overlap=8),
        "colour": node("SUPIRColorFix", "Colour fix", DECODE, image=["decode", 0], reference=STAGE1_IMAGE,
                       method="wavelet", strength=1.0),
        "resize_to": node("SUPIRResizeTo", "Resize to target", DECODE, image=["colour", 0],
                          width=["resize", 1], height=["resize", 2], method="lanczos"),
        "save": save(["resize_to", 0]),
        "preview": preview_stage1(),
    }


def stablesr_graph(ckpt: str, preset: str, colour: str, readme: str) -> dict:
    """Load (one StableSR file for the SD 2.1 model and StableSR's parts; the CFW file) → SUPIR Resize For Restore (x4,
    bicubic) → VAE Encode (the LR latent) → StableSR Apply → Tiled Aggregation (512 px tiles, stride 256) → StableSR
    Restore → CFW decode (w 0.5, tiled) → Colour Fix against the upscaled image → exact size → save."""
    vae, resized = ["ckpt", 2], ["resize", 0]
    return numbered({
        "note": note(readme),
        "ckpt": node("CheckpointLoaderSimple", "StableSR checkpoint (SD 2.1)", LOAD, ckpt_name=ckpt),
        "sr": node("StableSRLoader", "StableSR model", LOAD, stablesr_name=ckpt, weight_dtype="auto"),
        "cfw": node("StableSRLoadCFW", "CFW decoder", LOAD, cfw_name=STABLESR_CFW),
        "image": load_image(),
        "resize": node("SUPIRResize", "Upscale x4", STAGE1, image=["image", 0], scale_by=4.0, multiple="64",
                       method="bicubic"),
        "encode": node("VAEEncode", "LR latent", STAGE1, pixels=resized, vae=vae),
        "apply": node("ApplyStableSR", "StableSR Apply", RESTORE, model=["ckpt", 0], stablesr=["sr", 0],
                      lr_latent=["encode", 0]),
        "tiles": node("SUPIRTiledAggregation", "Tiled aggregation", RESTORE, model=["apply", 0],
                      tile_size=512, tile_stride=256, grid="snapped", tile_batch_size=1, weights="official",
                      tiles="auto"),
        "prompts": node("StableSRConditioning", "Prompts", PROMPTS, clip=["ckpt", 1], positive="",
                        negative=NEGATIVE_PROMPT, literal=True),
        "restore": node("StableSRRestore", "Restore", RESTORE, model=["tiles", 0],
                        positive=["prompts", 0], negative=["prompts", 1], lr_latent=["encode", 0], seed=0,
                        preset=preset, sampler="ddpm", steps=200, start="lr_latent", cfg=1.0, eta=0.0),
        "decode": node("StableSRCFWDecode", "CFW decode", DECODE, samples=["restore", 0], vae=vae,
                       cfw=["cfw", 0], lr_image=resized, w=0.5, vae_weights="cfw_file", tile_size=1024,
                       tiles="auto"),
        "colour": node("SUPIRColorFix", "Colour fix", DECODE, image=["decode", 0], reference=resized,
                       method=colour, strength=1.0),
        "resize_to": node("SUPIRResizeTo", "Resize to target", DECODE, image=["colour", 0],
                          width=["resize", 1], height=["resize", 2], method="bicubic"),
        "save": node("SaveImage", "Restored", SAVE, images=["resize_to", 0],
                     filename_prefix="stablesr/restored"),
    })


def benchmark_graph(readme: str) -> dict:
    """SUPIR Load Image Folder (HQ) → Degrade Image (LQ at the HQ size) → LQ encode → SUPIR Apply Control → prompts →
    SUPIR Restore → decode → SUPIR Benchmark Report (HQ, LQ, restored, names); runs once per image of the folder."""
    return numbered({
        "note": note(readme),
        **loaders(SDXL_BASE, SUPIR_Q),
        "folder": node("SUPIRLoadImageFolder", "High-quality images", LOAD, folder=BENCHMARK_FOLDER,
                       multiple=32),
        "degrade": node("SUPIRDegradeImage", "Degrade (synthetic LQ)", STAGE1, image=["folder", 0],
                        preset="realesrgan_x4", seed=0, resize_to_input=True),
        "lq": lq_encode(["degrade", 0]),
        "apply": apply_supir(MODEL, 1.0),
        "prompts": prompts(CLIP),
        "restore": restore(["apply", 0], "Quality"),
        "decode": decode(),
        "report": node("SUPIRBenchmarkReport", "Benchmark report", SAVE, hq_images=["folder", 0],
                       lq_images=["degrade", 0], restored_images=["decode", 0], crop_border=4, lpips=False,
                       dists=False, clipiqa=False, filename_prefix="supir_benchmark/report", names=["folder", 1]),
    })


def training_graph(readme: str) -> dict:
    """SUPIR Training Dataset (a folder of HQ photos) → SUPIR Train Restoration LoRA (SDXL, SUPIR, VAE, CLIP); the
    trainer shows its loss curve and writes the LoRA to models/loras."""
    return numbered({
        "note": note(readme),
        **loaders(SDXL_BASE, SUPIR_Q),
        "dataset": node("SUPIRTrainingDataset", "Training photos", LOAD, folder=TRAINING_FOLDER,
                        resolution=1024, aspect_buckets=True, default_caption=""),
        "train": node("SUPIRTrainLoRA", "Train restoration LoRA", TRAIN, model=MODEL,
                      supir_model=["supir", 0], vae=VAE, clip=CLIP, dataset=["dataset", 0],
                      lora_name="my_restoration_lora", steps=1000, rank=16, alpha=16.0, targets="attention",
                      learning_rate=1e-4, batch_size=1, grad_accumulation=4, training_dtype="bf16",
                      gradient_checkpointing=True, cache_latents=False, degradation="realesrgan_x4", snr_gamma=5.0,
                      seed=0, save_every=100, resume=True, validate_every=0, validation_steps=20),
    })


# The official prompt texts, repeated here so the workflows read on their own.
_POSITIVE = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
             "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
             "detailing, hyper sharpness, perfect without deformations.")
_NEGATIVE = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D "
             "render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
             "signature, jpeg artifacts, deformed, lowres, over-smooth")
# SSP-IR's instruction to its vision-language model
_INSTRUCTION = "Describe the image in a very detailed manner if we remove the degradation artifacts from the image."
_CAPTIONS = (f"Captions: put a vision-language model folder in ComfyUI/models/vlm (here {VLM}; see the README, "
             "'Captions', for the supported models) and pick it in 'Vision-language model'. ")

_UPSCALE = ("Load a small or low-quality image in 'Low-quality image': it is resized to {scale} x (sides rounded to "
            "a multiple of 64 for sampling), restored tile by tile (1024 px tiles, stride 512; one tile when the "
            "image fits) with the Quality preset, colour-fixed against the stage-1 image and saved at exactly "
            "{scale} x the input size. The VAE works in 512 px tiles, so memory stays bounded on large images.")

_STABLESR = ("Models: {ckpt} in ComfyUI/models/checkpoints (the StableSR file holds its SD 2.1 model too; StableSR "
             "Load Model lists it from there) and vqgan_cfw_00011.ckpt in ComfyUI/models/stablesr (StableSR weights "
             "are under the S-Lab licence, non-commercial). Load a small image in 'Low-quality image': it is "
             "upscaled x4 (bicubic, sides rounded to a multiple of 64), restored in 512 px tiles ({steps}), decoded "
             "with CFW at w = 0.5 (higher: closer to the input), colour-fixed ({colour}) against the upscaled image "
             "and saved at exactly 4 x the input size.")

SPECS = [
    {"name": "supir_restore_basic",
     "description": "Restore a photo with SDXL base + SUPIR-v0Q and the official Quality settings.",
     "nodes": restore_graph(SDXL_BASE, SUPIR_Q, "Quality", 1.0,
                            models_note(SDXL_BASE, SUPIR_Q)
                            + "Load your image in 'Low-quality image' at the size to restore at (about 1024 px on "
                              "the short side works best) and describe it in 'Prompts' (optional). Quality "
                              "preset: 50 RestoreEDM steps, CFG 4 -> 7.5.")},
    {"name": "supir_restore_fidelity",
     "description": "Restore with SUPIR-v0F and the official Fidelity settings: closest to the input.",
     "nodes": restore_graph(SDXL_BASE, SUPIR_F, "Fidelity", 1.0,
                            models_note(SDXL_BASE, SUPIR_F)
                            + "v0F keeps more detail on lightly degraded photos. Fidelity preset: 50 RestoreEDM "
                              "steps, CFG 1 -> 4.")},
    {"name": "supir_restore_lightning",
     "description": "Fast restore in 8 steps with a Lightning SDXL checkpoint and SUPIR-v0Q.",
     "nodes": restore_graph(SDXL_LIGHTNING, SUPIR_Q, "Lightning Quality", 0.9,
                            models_note(SDXL_LIGHTNING, SUPIR_Q)
                            + "Needs a Lightning SDXL (the Lightning preset gives poor results on a normal SDXL). "
                              "8 RestoreDPM++ 2M SDE steps, CFG 2; control 1.0 -> 0.9.")},
    {"name": "supir_upscale_x2",
     "description": "Upscale x2 and restore with SUPIR-v0Q, tiled aggregation and a wavelet colour fix.",
     "nodes": upscale_graph(2.0, models_note(SDXL_BASE, SUPIR_Q) + _UPSCALE.format(scale=2))},
    {"name": "supir_upscale_x4",
     "description": "Upscale x4 and restore with SUPIR-v0Q, tiled aggregation and a wavelet colour fix.",
     "nodes": upscale_graph(4.0, models_note(SDXL_BASE, SUPIR_Q) + _UPSCALE.format(scale=4))},
    {"name": "supir_caption_restore",
     "description": "Caption the photo with a local vision-language model, then restore it with SUPIR-v0Q.",
     "nodes": restore_graph(SDXL_BASE, SUPIR_Q, "Quality", 1.0,
                            models_note(SDXL_BASE, SUPIR_Q) + _CAPTIONS
                            + "The model describes the low-quality image (SSP-IR's instruction, greedy) and its "
                              "caption becomes the prompt; edit the instruction, prefix or suffix to steer it.",
                            caption_text=["caption", 0], vlm=vlm_loader(), caption=caption(["image", 0]))},
    {"name": "supir_caption_upscale_x4",
     "description": "Upscale x4 and restore tile by tile, each tile prompted by its own caption from a local "
                    "vision-language model.",
     "nodes": upscale_graph(4.0, models_note(SDXL_BASE, SUPIR_Q) + _CAPTIONS + _UPSCALE.format(scale=4)
                            + " The whole image's caption is the prompt; each tile's caption (same tile size and "
                              "stride, from the 'Tile size' and 'Tile stride' nodes) is that tile's prompt.",
                            captions=True)},
    {"name": "supir_restore_lora",
     "description": "Restore with a LoRA stack on the SDXL prior (before SUPIR Apply Control).",
     "nodes": lora_graph(models_note(SDXL_BASE, SUPIR_Q, DETAIL_LORA)
                         + "The LoRA stack patches the SDXL model and CLIP before SUPIR Apply Control; pick up to four "
                           "LoRAs and their strengths there (0 or None skips a slot). Quality preset.")},
    {"name": "supir_restore_lora_region",
     "description": "Restore with one LoRA stack inside a painted mask and another outside it.",
     "nodes": lora_region_graph(models_note(SDXL_BASE, SUPIR_Q, DETAIL_LORA)
                                + "Paint the region on 'Low-quality image' (right-click -> Open in MaskEditor): "
                                  "the painted part gets the inside stack (here more detail), the rest the "
                                  "outside stack (here less). Every step runs the model twice.")},
    {"name": "stablesr_upscale_x4",
     "description": "StableSR x4: 200 DDPM steps from the LR latent, CFW decode 0.5, AdaIN colour fix.",
     "nodes": stablesr_graph(STABLESR_512, "DDPM 200 (official)", "adain",
                             _STABLESR.format(ckpt=STABLESR_512, steps="200 DDPM steps, as the paper",
                                              colour="AdaIN"))},
    {"name": "stablesr_turbo_x4",
     "description": "StableSR Turbo x4: 4 DDPM steps, CFW decode 0.5, wavelet colour fix.",
     "nodes": stablesr_graph(STABLESR_TURBO, "Turbo DDPM 4", "wavelet",
                             _STABLESR.format(ckpt=STABLESR_TURBO, steps="4 DDPM steps with stablesr_turbo.ckpt",
                                              colour="wavelet"))},
    {"name": "supir_benchmark",
     "description": "Benchmark SUPIR on a folder of photos: degrade, restore, score (PSNR, SSIM) and report.",
     "nodes": benchmark_graph(models_note(SDXL_BASE, SUPIR_Q)
                              + f"Put high-quality photos in ComfyUI/input/{BENCHMARK_FOLDER}/. Each is cropped "
                                "to a multiple of 32, degraded (Real-ESRGAN x4 pipeline, seed + image index, "
                                "upsampled back to its size), restored with the Quality preset and scored; the "
                                "report (metrics.csv, summary.md, grid.png) goes to "
                                "ComfyUI/output/supir_benchmark/report_NNNNN_/.")},
    {"name": "supir_train_lora",
     "description": "Train a restoration LoRA on your own photos with SUPIR's objective.",
     "nodes": training_graph(models_note(SDXL_BASE, SUPIR_Q)
                             + f"Put high-quality photos in ComfyUI/input/{TRAINING_FOLDER}/ (a same-name .txt "
                               "beside a photo is its caption). Each step degrades random crops afresh (Real-ESRGAN "
                               "x4 pipeline) and trains the LoRA on SDXL's attention layers under SUPIR. A "
                               "checkpoint is saved every 100 steps and on Cancel: queue again to resume. The LoRA "
                               "goes to ComfyUI/models/loras/my_restoration_lora.safetensors (kohya format); load it "
                               "with SUPIR LoRA Stack or Load LoRA before SUPIR Apply Control.")},
]
