"""SUPIR Conditioning: caption + quality suffix and the official negative prompt, as SDXL conditioning."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.sampling.prompts import DEFAULT_NEGATIVE, DEFAULT_POSITIVE, OFFICIAL_SIZE, supir_conditioning

SIZES = ("1024 (official)", "image size")


class SUPIRConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRConditioning", display_name="SUPIR Conditioning", category="supir",
            description="Positive = caption + quality suffix, negative = SUPIR's negative prompt, with SDXL size "
                        "conditioning. Long captions are encoded in 77-token chunks, so the quality words are "
                        "never cut off.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL text encoders (from the SDXL checkpoint)."),
                io.String.Input("caption", multiline=True, default="",
                                tooltip="What the photo shows (a short description or a captioner's output)."),
                io.String.Input("positive_suffix", multiline=True, default=DEFAULT_POSITIVE,
                                tooltip="Quality words appended to the caption (official default)."),
                io.String.Input("negative", multiline=True, default=DEFAULT_NEGATIVE,
                                tooltip="Negative prompt (official default)."),
                io.Combo.Input("size_conditioning", options=list(SIZES), default=SIZES[0],
                               tooltip="SDXL size conditioning: 1024x1024 as the official code, or the image's size "
                                       "(needs the hint)."),
                io.Boolean.Input("caption_per_line", default=False,
                                 tooltip="Each line of caption is the caption of one image of the batch."),
                io.Latent.Input("hint", optional=True,
                                tooltip="The hint from SUPIR LQ Encode: gives the image size and checks the batch."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="Caption + quality suffix, with size "
                                                                             "conditioning."),
                     io.Conditioning.Output(display_name="negative", tooltip="The negative prompt, with size "
                                                                             "conditioning.")],
        )

    @classmethod
    def execute(cls, clip, caption, positive_suffix, negative, size_conditioning, caption_per_line, hint=None):
        width = height = OFFICIAL_SIZE
        batch = None if hint is None else hint["samples"].shape[0]
        if size_conditioning == SIZES[1]:
            if hint is None:
                raise ValueError("size_conditioning 'image size' needs the hint input (from SUPIR LQ Encode)")
            height, width = (8 * s for s in hint["samples"].shape[-2:])
        positive, negative = supir_conditioning(clip, caption, positive_suffix, negative, width, height,
                                                caption_per_line, batch)
        return io.NodeOutput(positive, negative)


NODES = [SUPIRConditioning]
