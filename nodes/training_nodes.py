"""Restoration LoRA training in the graph: a dataset node and the trainer."""
from __future__ import annotations

import os

import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..lora_train.checkpoint import check_overwrite
from ..lora_train.dataset import Sample, build_dataset, read_folder
from ..lora_train.host.adapters import TARGETS, save_lora
from ..lora_train.host.trainer import DTYPES, TrainSettings, train
from ..lora_train.host.validation import validation_restore, with_adapters
from ..lora_train.plot import loss_curve_image
from ..supir.checks import check_file_name, check_finite_image
from ..supir.host.lora_stack import apply_lora
from ..supir.lora.formats import read_lora
from ..supir.quality.degradation import DEGRADATION_PRESETS
from ..supir.sampling.samplers import RestoreSettings
from .folders import input_subfolder, skipped_report
from .supir_nodes import SUPIRModelType

CATEGORY = "supir/training"
DatasetType = io.Custom("SUPIR_TRAINING_DATASET")
CHECKPOINT_FOLDER = "supir_lora_training"
LORA_SUFFIX = ".safetensors.partial"  # the longest name the LoRA has: it is written beside itself, then renamed


def safe_name(name: str) -> str:
    """``lora_name`` without its extension, checked to be a file name the LoRA and its checkpoint folder can have."""
    name = name.removesuffix(".safetensors")
    check_file_name(name, "lora_name", LORA_SUFFIX)
    if name.startswith("."):
        raise ValueError(f"lora_name {name!r} starts with '.', which hides the file and its checkpoint folder (and "
                         f"LoRA loaders do not list it); remove the leading dot, e.g. {name.lstrip('.') or 'my_lora'!r}")
    return name


class SUPIRTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRTrainingDataset",
            display_name="SUPIR Training Dataset",
            category=CATEGORY,
            description="High-quality images for restoration LoRA training: a folder under ComfyUI's input "
                        "directory (a same-name .txt beside an image is its caption) and/or an IMAGE batch. The "
                        "trainer degrades them itself at every step.",
            inputs=[
                io.String.Input("folder", default="", tooltip="Folder inside ComfyUI/input ('' for none)."),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=64,
                             tooltip="Training side length: crops have about resolution² pixels."),
                io.Boolean.Input("aspect_buckets", default=True,
                                 tooltip="Crop each image at the bucket nearest its aspect ratio (else square)."),
                io.String.Input("default_caption", default="", multiline=True,
                                tooltip="Caption of images without a .txt file (and of the IMAGE input)."),
                io.Image.Input("images", optional=True, tooltip="Extra HQ images (a batch)."),
            ],
            outputs=[DatasetType.Output(display_name="dataset",
                                         tooltip="The images, captions and aspect buckets, for SUPIR Train "
                                                 "Restoration LoRA."),
                     io.String.Output(display_name="report",
                                      tooltip="Image and caption counts, the buckets used and any unreadable "
                                              "files skipped.")],
        )

    @classmethod
    def execute(cls, folder, resolution, aspect_buckets, default_caption, images=None) -> io.NodeOutput:
        samples, unreadable = ([], []) if not folder else read_folder(input_subfolder(folder), default_caption)
        if images is not None:
            check_finite_image(images, "images")
            samples += [Sample(img[..., :3].float(), default_caption, f"image {i}") for i, img in enumerate(images)]
        dataset = build_dataset(samples, resolution, aspect_buckets, unreadable)
        used = sorted({dataset.buckets[b] for b in dataset.bucket_of})
        report = (f"{len(samples)} images, {len({s.caption for s in samples})} distinct captions, buckets "
                  + ", ".join(f"{w}x{h}" for w, h in used))
        report = "\n".join(filter(None, [report, skipped_report(unreadable)]))
        return io.NodeOutput(dataset, report)


class SUPIRTrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRTrainLoRA",
            display_name="SUPIR Train Restoration LoRA",
            category=CATEGORY,
            description="Trains a LoRA on the SDXL prior with SUPIR's objective: each step degrades HQ crops "
                        "afresh, the frozen SUPIR trunk reads the LQ hint, and the loss is SDXL's ε-MSE on the "
                        "noised HQ latent. Checkpoints (LoRA, optimizer, step) are saved every save_every steps "
                        "and on interrupt; with resume a run continues exactly where it stopped. The LoRA is "
                        "written in kohya format to ComfyUI/models/loras.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model (from Load Checkpoint)."),
                SUPIRModelType.Input("supir_model", tooltip="From SUPIR Load Model: the frozen control trunk and denoise "
                                                            "encoder."),
                io.Vae.Input("vae", tooltip="The SDXL VAE."),
                io.Clip.Input("clip", tooltip="The SDXL CLIP, for the captions."),
                DatasetType.Input("dataset", tooltip="From SUPIR Training Dataset."),
                io.String.Input("lora_name", default="supir_restore_lora",
                                tooltip="File name in ComfyUI/models/loras (and the checkpoint folder's name)."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000,
                             tooltip="Optimizer steps in total; to train longer, raise it and queue again with "
                                     "resume on."),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="Rank of the LoRA (its size and capacity)."),
                io.Float.Input("alpha", default=16.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="The LoRA's scale is alpha / rank."),
                io.Combo.Input("targets", options=list(TARGETS), default="attention",
                               tooltip="attention: the attention linears (default); attention+ff adds the "
                                       "feed-forwards; transformer adds proj_in/out; all: every linear and conv."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate (weight decay 0.01)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Crops per micro-batch, all from one aspect bucket."),
                io.Int.Input("grad_accumulation", default=1, min=1, max=256,
                             tooltip="Micro-batches whose gradients are summed before each optimizer step."),
                io.Combo.Input("training_dtype", options=list(DTYPES), default="fp32",
                               tooltip="bf16 runs the model under bf16 autocast; the LoRA stays fp32."),
                io.Boolean.Input("gradient_checkpointing", default=True,
                                 tooltip="Recompute UNet block activations in the backward pass (less memory)."),
                io.Boolean.Input("cache_latents", default=False,
                                 tooltip="One fixed crop per image, HQ latents encoded once (faster, less varied)."),
                io.Combo.Input("degradation", options=list(DEGRADATION_PRESETS), default="realesrgan_x4",
                               tooltip="How the LQ of each sample is synthesised (SUPIR Degrade presets)."),
                io.Float.Input("snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5,
                               tooltip="min-SNR-γ loss weighting (0: off; 5 is common)."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1, control_after_generate=False,
                             tooltip="Seed of every random draw (crops, degradations, timesteps, noise); "
                                     "step s draws from (seed, s), so a resumed run continues exactly."),
                io.Int.Input("save_every", default=100, min=0, max=1_000_000,
                             tooltip="Checkpoint every N steps (0: only at the end and on interrupt)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue this lora_name's checkpoint when there is one (off: start "
                                         "afresh, replacing this lora_name's checkpoint and LoRA)."),
                io.Image.Input("validation_images", optional=True,
                               tooltip="Held-out HQ images: degraded, restored and scored (PSNR/SSIM)."),
                io.Int.Input("validate_every", default=0, min=0, max=1_000_000,
                             tooltip="Validate every N steps (0: only at the end)."),
                io.Int.Input("validation_steps", default=20, min=1, max=200,
                             tooltip="Sampling steps of a validation restore (RestoreEDM, CFG 4 → 7.5)."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Allow replacing a LoRA file of this name that no training run of this "
                                         "lora_name made (off: such a file is never touched)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The SDXL model with the trained LoRA applied."),
                io.String.Output(display_name="lora_path", tooltip="The saved LoRA file in ComfyUI/models/loras."),
                io.Image.Output(display_name="loss_curve", tooltip="Per-step loss (grey) and its moving average (blue)."),
                io.String.Output(display_name="report",
                                 tooltip="Steps run, the LoRA and checkpoint paths, tensors applied, loss and "
                                         "validation PSNR/SSIM."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, supir_model, vae, clip, dataset, lora_name, steps, rank, alpha, targets, learning_rate,
                batch_size, grad_accumulation, training_dtype, gradient_checkpointing, cache_latents, degradation,
                snr_gamma, seed, save_every, resume, validate_every, validation_steps,
                validation_images=None, overwrite=False) -> io.NodeOutput:
        name = safe_name(lora_name)
        settings = TrainSettings(steps, rank, alpha, targets, learning_rate, 1e-2, batch_size, grad_accumulation,
                                 training_dtype, gradient_checkpointing, cache_latents, degradation, snr_gamma, 1.0,
                                 seed, save_every)
        checkpoint = os.path.join(folder_paths.get_output_directory(), CHECKPOINT_FOLDER, name,
                                  "checkpoint.safetensors")
        lora_path = os.path.join(folder_paths.get_folder_paths("loras")[0], name + ".safetensors")
        check_overwrite(lora_path, checkpoint, overwrite)
        pbar = comfy.utils.ProgressBar(steps)
        node_id = cls.hidden.unique_id

        def on_step(step: int, loss: float) -> None:
            pbar.update_absolute(step, steps)
            _progress_text(f"step {step}/{steps}  loss {loss:.4f}", node_id)

        validate = None
        if validation_images is not None:
            restore = RestoreSettings("RestoreEDM", validation_steps)
            held_out = validation_images[..., :3].float()
            check_finite_image(held_out, "validation_images")

            def validate(adapters, step):
                out = validation_restore(with_adapters(model, adapters), supir_model, vae, clip, held_out,
                                         degradation, seed, restore)
                return {"step": step, "psnr": out["psnr"], "ssim": out["ssim"]}

        result = train(model, supir_model, vae, clip, dataset, settings, checkpoint, resume, on_step, validate,
                       validate_every)
        shapes = {k: model.get_model_object(k[:-len(".weight")]).weight.shape for k in result.adapters}
        save_lora(result.adapters, shapes, lora_path, {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                                       "ss_network_alpha": str(alpha),
                                                       "supir_restore_training": repr(settings)})
        trained, _, applied = apply_lora(model, None, read_lora(lora_path), name, 1.0)
        lines = [f"{result.steps_done} steps (resumed at {result.resumed_from})" if result.resumed_from else
                 f"{result.steps_done} steps", f"LoRA: {lora_path}", applied.describe(),
                 f"checkpoint: {checkpoint}"]
        if result.losses:
            tail = result.losses[-max(1, len(result.losses) // 10):]
            lines.append(f"loss: first {result.losses[0]:.4f}, mean of the last {len(tail)} {sum(tail) / len(tail):.4f}")
        lines += [f"validation at step {v['step']}: PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.4f}"
                  for v in result.validation]
        curve = loss_curve_image(result.losses)
        return io.NodeOutput(trained, lora_path, curve, "\n".join(lines), ui=ui.PreviewImage(curve, cls=cls))


def _progress_text(text: str, node_id: str | None) -> None:
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is not None and node_id is not None:
        PromptServer.instance.send_progress_text(text, node_id)


NODES = [SUPIRTrainingDataset, SUPIRTrainLoRA]
