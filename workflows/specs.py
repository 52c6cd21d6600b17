"""The shipped workflows as graphs in API form (node id -> class, inputs, title, position); ``build.py`` turns
them into the UI and API files. Model file names are the official ones; change them in the loaders."""
from __future__ import annotations

SDXL_BASE = "sd_xl_base_1.0_0.9vae.safetensors"
SDXL_LIGHTNING = "juggernautXL_v9Rdphoto2Lightning.safetensors"
EXAMPLE_IMAGE = "example.png"

NOTE_COLOR = {"color": "#432", "bgcolor": "#653"}


def note(text: str, pos=(20, 20)) -> dict:
    return {"class_type": "Note", "title": "Read me", "inputs": {"text": text}, "pos": pos, "size": (400, 220),
            **NOTE_COLOR}


def restore_graph(ckpt: str, supir: str, preset: str, scale_end: float, readme: str) -> dict:
    """Load → LQ encode → Apply SUPIR → conditioning → SUPIR Restore → decode → save (+ stage-1 preview)."""
    return {
        "1": note(readme),
        "2": {"class_type": "CheckpointLoaderSimple", "title": "SDXL checkpoint", "inputs": {"ckpt_name": ckpt},
              "pos": (20, 280)},
        "3": {"class_type": "SUPIRLoader", "title": "SUPIR model",
              "inputs": {"supir_name": supir, "weight_dtype": "auto"}, "pos": (20, 440)},
        "4": {"class_type": "LoadImage", "title": "Low-quality image", "inputs": {"image": EXAMPLE_IMAGE},
              "pos": (20, 580), "size": (320, 340)},
        "5": {"class_type": "SUPIRLQEncode", "title": "Stage 1: LQ encode",
              "inputs": {"supir": ["3", 0], "vae": ["2", 2], "image": ["4", 0], "tile_size": 0}, "pos": (420, 440)},
        "6": {"class_type": "ApplySUPIR", "title": "Apply SUPIR",
              "inputs": {"model": ["2", 0], "supir": ["3", 0], "hint": ["5", 0], "control_scale_start": 1.0,
                         "control_scale_end": scale_end}, "pos": (820, 280)},
        "7": {"class_type": "SUPIRConditioning", "title": "Prompts",
              "inputs": {"clip": ["2", 1], "caption": "", "positive_suffix": _POSITIVE, "negative": _NEGATIVE,
                         "size_conditioning": "1024 (official)", "caption_per_line": False, "hint": ["5", 0]},
              "pos": (820, 480), "size": (400, 380)},
        "8": {"class_type": "SUPIRRestore", "title": "Stage 2: restore",
              "inputs": {"model": ["6", 0], "positive": ["7", 0], "negative": ["7", 1], "hint": ["5", 0],
                         "seed": 0, "preset": preset, "start": "noise", "denoise": 1.0, "sampler": "RestoreEDM",
                         "steps": 50, "s_churn": 5.0, "s_noise": 1.003, "eta": 1.0, "cfg_start": 4.0,
                         "cfg_end": 7.5, "restore_cfg": -1.0, "restore_cfg_s_tmin": 0.05},
              "pos": (1260, 280), "size": (340, 480)},
        "9": {"class_type": "VAEDecode", "title": "Decode", "inputs": {"samples": ["8", 0], "vae": ["2", 2]},
              "pos": (1640, 280)},
        "10": {"class_type": "SaveImage", "title": "Restored",
               "inputs": {"images": ["9", 0], "filename_prefix": "supir/restored"}, "pos": (1880, 280),
               "size": (400, 440)},
        "11": {"class_type": "PreviewImage", "title": "Stage-1 image", "inputs": {"images": ["5", 1]},
               "pos": (420, 640), "size": (320, 320)},
    }


# The official prompt texts, repeated here so the workflows read on their own.
_POSITIVE = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - "
             "realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore "
             "detailing, hyper sharpness, perfect without deformations.")
_NEGATIVE = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D "
             "render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
             "signature, jpeg artifacts, deformed, lowres, over-smooth")

_MODELS = ("Models: {ckpt} in ComfyUI/models/checkpoints; {supir} in ComfyUI/models/supir (SUPIR weights are "
           "licensed for non-commercial use only; never bundled). ")

SPECS = [
    {"name": "supir_restore_basic",
     "description": "Restore a photo with SDXL base + SUPIR-v0Q and the official Quality settings.",
     "nodes": restore_graph(SDXL_BASE, "SUPIR-v0Q.ckpt", "Quality", 1.0,
                            _MODELS.format(ckpt=SDXL_BASE, supir="SUPIR-v0Q.ckpt")
                            + "Load your image in 'Low-quality image' at the size to restore at (about 1024 px on "
                              "the short side works best) and describe it in 'Prompts' (optional). Quality "
                              "preset: 50 RestoreEDM steps, CFG 4 -> 7.5.")},
    {"name": "supir_restore_fidelity",
     "description": "Restore with SUPIR-v0F and the official Fidelity settings: closest to the input.",
     "nodes": restore_graph(SDXL_BASE, "SUPIR-v0F.ckpt", "Fidelity", 1.0,
                            _MODELS.format(ckpt=SDXL_BASE, supir="SUPIR-v0F.ckpt")
                            + "v0F keeps more detail on lightly degraded photos. Fidelity preset: 50 RestoreEDM "
                              "steps, CFG 1 -> 4.")},
    {"name": "supir_restore_lightning",
     "description": "Fast restore in 8 steps with a Lightning SDXL checkpoint and SUPIR-v0Q.",
     "nodes": restore_graph(SDXL_LIGHTNING, "SUPIR-v0Q.ckpt", "Lightning Quality", 0.9,
                            _MODELS.format(ckpt=SDXL_LIGHTNING, supir="SUPIR-v0Q.ckpt")
                            + "Needs a Lightning SDXL (the Lightning preset gives poor results on a normal SDXL). "
                              "8 RestoreDPM++ 2M SDE steps, CFG 2; control 1.0 -> 0.9.")},
]
