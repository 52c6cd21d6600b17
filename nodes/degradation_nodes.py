"""Benchmark nodes: synthesise a low-quality image from a high-quality one, and score a restoration against it."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .folders import iqa_dir

from ..supir.checks import check_finite_image
from ..supir.quality.degradation import DEGRADATION_PRESETS, degrade, describe
from ..supir.quality.metrics import LEARNED_METRICS, fidelity_metrics, load_learned_metric

CATEGORY = "supir/benchmark"


class DegradeImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRDegradeImage",
            display_name="SUPIR Degrade Image (synthetic LQ)",
            category=CATEGORY,
            description="Makes a low-quality test image from a high-quality one: Real-ESRGAN's second-order random "
                        "pipeline (or StableSR's lighter ranges), or a fixed preset with explicit values. The same "
                        "seed gives the same result; image i uses seed + i, counting through a batch and through a "
                        "list (SUPIR Load Image Folder) alike, as the command-line benchmark does.",
            inputs=[
                io.Image.Input("image", tooltip="The high-quality (ground-truth) image, RGB: a batch or a list."),
                io.Combo.Input("preset", options=list(DEGRADATION_PRESETS), default="realesrgan_x4",
                               tooltip="; ".join(describe(name) for name in DEGRADATION_PRESETS)),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the random parameters and noise."),
                io.Boolean.Input("resize_to_input", default=False,
                                 tooltip="Bicubic-upsample the LQ back to the input size (the size SUPIR restores "
                                         "at); off returns the LQ at 1/scale."),
            ],
            outputs=[io.Image.Output(display_name="lq_image", is_output_list=True,
                                     tooltip="The degraded images, on the 8-bit grid: one output per input batch "
                                             "(a list when the input is a list).")],
            is_input_list=True,
        )

    @classmethod
    def execute(cls, image, preset, seed, resize_to_input) -> io.NodeOutput:
        preset, seed, resize_to_input = preset[0], seed[0], resize_to_input[0]
        out, first = [], 0
        for batch in image:
            check_finite_image(batch, "image")
            out.append(degrade(batch, preset, seed + first, resize_to_input))
            first += batch.shape[0]
        return io.NodeOutput(out)


class ImageMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRImageMetrics",
            display_name="SUPIR Image Quality Metrics",
            category=CATEGORY,
            description="Scores a restored image against the ground truth: PSNR and SSIM on BT.601 luma (Y) and on "
                        "RGB, after removing crop_border pixels (the SR-paper convention), plus an optional learned "
                        "metric read from ComfyUI/models/iqa/<metric>/ (never downloaded). Values are batch means; "
                        "the report lists every image.",
            inputs=[
                io.Image.Input("image", tooltip="The restored image."),
                io.Image.Input("reference", tooltip="The ground truth, same size; one per image or one for all."),
                io.Int.Input("crop_border", default=0, min=0, max=64,
                             tooltip="Pixels removed from each side before scoring; use the SR scale (4 for x4)."),
                io.Combo.Input("learned_metric", options=["none", *LEARNED_METRICS], default="none",
                               tooltip="A learned metric whose weight files you placed in "
                                       "ComfyUI/models/iqa/<metric>/ (clipi reads the clipiqa folder); the error "
                                       "names any missing file. lpips, dists: distances (lower is better); clipi: "
                                       "CLIP-I, the similarity of the CLIP image embeddings to the reference's "
                                       "(higher is better); clipiqa, musiq, maniqa: no-reference quality (higher "
                                       "is better, the reference is ignored)."),
            ],
            outputs=[
                io.Float.Output(display_name="psnr_y", tooltip="PSNR on Y in dB (batch mean)."),
                io.Float.Output(display_name="ssim_y", tooltip="SSIM on Y (batch mean)."),
                io.Float.Output(display_name="psnr_rgb", tooltip="PSNR on RGB in dB (batch mean)."),
                io.Float.Output(display_name="ssim_rgb", tooltip="SSIM on RGB (batch mean)."),
                io.String.Output(display_name="report", tooltip="Every metric for every image, as text."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, reference, crop_border, learned_metric) -> io.NodeOutput:
        check_finite_image(image, "image")
        check_finite_image(reference, "reference")
        scores = fidelity_metrics(image, reference, crop_border)
        if learned_metric != "none":
            scores[learned_metric] = load_learned_metric(learned_metric, iqa_dir())(image, reference.expand_as(image))
        lines = [f"{k}: mean {v.mean().item():.4f}  [{', '.join(f'{x:.4f}' for x in v.tolist())}]"
                 for k, v in scores.items()]
        report = f"crop_border {crop_border}\n" + "\n".join(lines)
        means = [scores[k].mean().item() for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")]
        return io.NodeOutput(*means, report, ui=ui.PreviewText(report))


NODES = [DegradeImage, ImageMetrics]
