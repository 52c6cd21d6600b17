"""Image nodes for restoring at any resolution: resize to a sampling size, colour fix, resize to the exact target."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.checks import check_finite_image
from ..supir.image.colour import COLOUR_FIXES, colour_fix
from ..supir.image.resize import MAX_SIDE, MULTIPLES, RESIZE_METHODS, resize_image, sampling_size, scaled_size

CATEGORY = "supir/image"
COLOUR_FIX_TOOLTIP = (
    "wavelet: local colour from the reference, detail from the image (SUPIR's default). wavelet_adaptive: wavelet "
    "with the halos around contours the reference lost kept faint. adain: per-channel RGB mean and spread. lab: the "
    "same in CIELAB (Reinhard). mkl: mean and full colour covariance in CIELAB (Monge-Kantorovich linear). "
    "histogram: each RGB channel's whole distribution.")
METHOD_TOOLTIP = ("Resampling filter: lanczos (sharpest, for enlarging), bicubic or bilinear (antialiased when "
                  "shrinking), area (box average, for shrinking).")


class SUPIRColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRColorFix",
            display_name="SUPIR Colour Fix",
            category=CATEGORY,
            description="Gives the restored image the colours of a reference, normally the stage-1 image from SUPIR "
                        "LQ Encode. wavelet keeps the restored detail and takes the large-scale colour (a low-pass "
                        "of about 13 px) from the reference; wavelet_adaptive does the same but limits how far one "
                        "pixel can pull its neighbours, so halos stay faint where the reference lost detail; "
                        "adain, lab, mkl and histogram match global colour statistics (as ComfyUI's Color "
                        "Transfer). The reference is resized to the image first; an RGBA image keeps its alpha.",
            inputs=[
                io.Image.Input("image", tooltip="The restored image (grey, RGB or RGBA)."),
                io.Image.Input("reference", tooltip="The image with the right colours (the stage-1 image), one for "
                                                    "the whole batch or one per image; any size."),
                io.Combo.Input("method", options=list(COLOUR_FIXES), default="wavelet",
                               tooltip=COLOUR_FIX_TOOLTIP),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 applies the full correction, 0 none; in between blends linearly."),
            ],
            outputs=[io.Image.Output(tooltip="The colour-corrected image, clamped to [0, 1].")],
        )

    @classmethod
    def execute(cls, image, reference, method, strength) -> io.NodeOutput:
        check_finite_image(image, "image")
        check_finite_image(reference, "reference")
        return io.NodeOutput(colour_fix(image, reference, method, strength))


class SUPIRResize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRResize",
            display_name="SUPIR Resize For Restore",
            category=CATEGORY,
            description="Scales the image by scale_by and rounds each side to the nearest multiple (never to 0) so "
                        "SUPIR can restore it. Also outputs the exact target size (original × scale_by, rounded) "
                        f"for SUPIR Resize To Size at the end of the graph. Sides are limited to {MAX_SIDE} px.",
            inputs=[
                io.Image.Input("image", tooltip="The low-quality image."),
                io.Float.Input("scale_by", default=2.0, min=0.01, max=16.0, step=0.01,
                               tooltip="Output size over input size, e.g. 2 to restore a 512 px image to 1024 px."),
                io.Combo.Input("multiple", options=[str(m) for m in MULTIPLES], default="64",
                               tooltip="Sampling sides are rounded to the nearest multiple of this: 64 as SUPIR's "
                                       "scripts, 32 as its demo, 8 the least the VAE accepts."),
                io.Combo.Input("method", options=list(RESIZE_METHODS), default="lanczos", tooltip=METHOD_TOOLTIP),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The image at the sampling size."),
                io.Int.Output(display_name="width", tooltip="Target width: original width × scale_by, rounded."),
                io.Int.Output(display_name="height", tooltip="Target height: original height × scale_by, rounded."),
            ],
        )

    @classmethod
    def execute(cls, image, scale_by, multiple, method) -> io.NodeOutput:
        check_finite_image(image, "image")
        height, width = image.shape[1:3]
        target_h, target_w = scaled_size(height, width, scale_by)
        sample_h, sample_w = sampling_size(height, width, scale_by, int(multiple))
        return io.NodeOutput(resize_image(image, sample_h, sample_w, method), target_w, target_h)


class SUPIRResizeTo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRResizeTo",
            display_name="SUPIR Resize To Size",
            category=CATEGORY,
            description="Resizes the restored image to an exact size, normally the width and height from SUPIR "
                        "Resize For Restore, undoing its rounding to a multiple.",
            inputs=[
                io.Image.Input("image", tooltip="The restored (and colour-fixed) image."),
                io.Int.Input("width", default=1024, min=1, max=MAX_SIDE,
                             tooltip="Output width in pixels (connect SUPIR Resize For Restore's width)."),
                io.Int.Input("height", default=1024, min=1, max=MAX_SIDE,
                             tooltip="Output height in pixels (connect SUPIR Resize For Restore's height)."),
                io.Combo.Input("method", options=list(RESIZE_METHODS), default="lanczos", tooltip=METHOD_TOOLTIP),
            ],
            outputs=[io.Image.Output(tooltip="The image at exactly width × height.")],
        )

    @classmethod
    def execute(cls, image, width, height, method) -> io.NodeOutput:
        check_finite_image(image, "image")
        return io.NodeOutput(resize_image(image, height, width, method))


NODES = [SUPIRColorFix, SUPIRResize, SUPIRResizeTo]
