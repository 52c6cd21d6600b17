"""LoRA nodes: apply a LoRA stack to the SDXL prior, inspect a LoRA, merge LoRAs, bake a stack into a checkpoint."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io, ui

from ..supir.checks import check_filename_prefix
from ..supir.host.lora_region import apply_region_blend
from ..supir.host.lora_stack import SAVE_DTYPES, apply_lora_stack, bake_checkpoint, merge_loras, save_merged_lora
from ..supir.lora.formats import inspect_lora, read_lora

CATEGORY = "supir/lora"
SLOTS = 4
NONE = "None"
SAVED_SUFFIX = "_00001_.safetensors"  # ComfyUI's counter and the extension, appended to the prefix's name


def lora_options() -> list[str]:
    return [NONE, *folder_paths.get_filename_list("loras")]


def slot_inputs(amount: str, tooltip: str, stack: str = "") -> list:
    """lora{stack}_i combo and {amount}{stack}_i float inputs for every slot (``stack``: "" or e.g. "_inside")."""
    inputs = []
    for i in range(1, SLOTS + 1):
        inputs.append(io.Combo.Input(f"lora{stack}_{i}", options=lora_options(), default=NONE,
                                     tooltip=f"LoRA {i} from ComfyUI/models/loras (None leaves the slot empty)."))
        inputs.append(io.Float.Input(f"{amount}{stack}_{i}", default=1.0, min=-10.0, max=10.0, step=0.01,
                                     tooltip=tooltip))
    return inputs


def selected(slots: dict, amount: str, stack: str = "") -> list[tuple[str, dict, float]]:
    """(name, tensors, amount) of every filled slot of ``stack``, in slot order."""
    chosen = [(slots[f"lora{stack}_{i}"], slots[f"{amount}{stack}_{i}"]) for i in range(1, SLOTS + 1)
              if slots.get(f"lora{stack}_{i}", NONE) != NONE]
    return [(name, read_lora(folder_paths.get_full_path_or_raise("loras", name)), value) for name, value in chosen]


class SUPIRLoraStack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoraStack",
            display_name="SUPIR LoRA Stack",
            category=CATEGORY,
            description="Applies up to four LoRAs to the SDXL model (and to CLIP where a file has text-encoder "
                        "tensors) through ComfyUI's patching; place it before SUPIR Apply Control. Reads kohya, ComfyUI, "
                        "diffusers/PEFT and LyCORIS files. The report counts the tensors applied and lists those "
                        "ignored; a LoRA that fits nothing in the model (e.g. one for SD1.5) is an error.",
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model from the checkpoint loader."),
                io.Clip.Input("clip", optional=True, tooltip="The SDXL CLIP; without it text-encoder tensors are ignored."),
                *slot_inputs("strength", "Strength of this LoRA on the model and CLIP (0 skips it)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRAs, for SUPIR Apply Control."),
                io.Clip.Output(display_name="clip", tooltip="The CLIP with the LoRAs (None when no CLIP was given)."),
                io.String.Output(display_name="report", tooltip="Per LoRA: tensors applied, weights patched, ignored keys."),
            ],
        )

    @classmethod
    def execute(cls, model, clip=None, **slots) -> io.NodeOutput:
        model, clip, report = apply_lora_stack(model, clip, selected(slots, "strength"))
        return io.NodeOutput(model, clip, report)


class SUPIRLoraInspect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoraInspect",
            display_name="SUPIR LoRA Inspect",
            category=CATEGORY,
            description="Reports a LoRA's format, rank, alpha, target layers and the base model it fits (SDXL, "
                        "SD1.5, SD2.x or unknown, from the width of its cross-attention layers).",
            inputs=[io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                                   tooltip="LoRA from ComfyUI/models/loras.")],
            outputs=[io.String.Output(display_name="report", tooltip="The inspection as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, lora_name) -> io.NodeOutput:
        report = inspect_lora(read_lora(folder_paths.get_full_path_or_raise("loras", lora_name))).describe()
        return io.NodeOutput(report, ui=ui.PreviewText(report))


class SUPIRLoraMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoraMerge",
            display_name="SUPIR LoRA Merge",
            category=CATEGORY,
            description="Merges up to four LoRAs with weights into one kohya-format LoRA: per layer, the SVD of "
                        "the weighted sum of deltas kept to `rank`. Saved under ComfyUI's output folder; move it to "
                        "models/loras to use it. The model (and CLIP) resolve layer names across formats. LyCORIS "
                        "files cannot be merged (bake them into a checkpoint instead).",
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model the LoRAs are for."),
                io.Clip.Input("clip", optional=True, tooltip="The SDXL CLIP, to merge text-encoder layers too."),
                *slot_inputs("weight", "Weight of this LoRA in the sum."),
                io.Int.Input("rank", default=32, min=1, max=1024, tooltip="Rank of the merged LoRA (per layer at "
                             "most the layer's full rank; at full rank the merge is exact)."),
                io.Combo.Input("save_dtype", options=list(SAVE_DTYPES), default="fp16",
                               tooltip="Precision of the saved tensors."),
                io.String.Input("filename_prefix", default="loras/supir_merged",
                                tooltip="Path under ComfyUI's output folder."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Sources, layer count and the saved path.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, rank, save_dtype, filename_prefix, clip=None, **slots) -> io.NodeOutput:
        check_filename_prefix(filename_prefix, "filename_prefix", SAVED_SUFFIX)
        stack = [entry for entry in selected(slots, "weight") if entry[2] != 0]
        sd, report = merge_loras(model, clip, stack, rank, SAVE_DTYPES[save_dtype])
        path = save_merged_lora(sd, filename_prefix, [(name, weight) for name, _, weight in stack])
        report += f"\nsaved: {path}"
        return io.NodeOutput(report, ui=ui.PreviewText(report))


class SUPIRSaveBakedCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRSaveBakedCheckpoint",
            display_name="SUPIR Save Checkpoint (LoRAs baked)",
            category=CATEGORY,
            description="Saves the SDXL model and CLIP with their LoRAs merged into the weights, and the VAE, as "
                        "one checkpoint under ComfyUI's output folder. Connect it after SUPIR LoRA Stack, not after "
                        "SUPIR Apply Control (SUPIR itself is not part of an SDXL checkpoint).",
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model with LoRAs applied."),
                io.Clip.Input("clip", tooltip="The SDXL CLIP with LoRAs applied."),
                io.Vae.Input("vae", tooltip="The SDXL VAE."),
                io.String.Input("filename_prefix", default="checkpoints/supir_baked",
                                tooltip="Path under ComfyUI's output folder."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The saved checkpoint file.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, filename_prefix) -> io.NodeOutput:
        check_filename_prefix(filename_prefix, "filename_prefix", SAVED_SUFFIX)
        path = bake_checkpoint(model, clip, vae, filename_prefix)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved: {path}"))


class SUPIRLoraRegionBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRLoraRegionBlend",
            display_name="SUPIR LoRA Region Blend",
            category=CATEGORY,
            description="Samples with one LoRA stack inside the mask and another outside it (e.g. a face LoRA on "
                        "the faces, a texture LoRA on the background). Every model call runs twice on the same UNet, "
                        "once with each stack patched into its weights in place (ComfyUI's hook LoRAs), and the two "
                        "predictions are mixed per latent pixel: mask·inside + (1 − mask)·outside. An empty stack "
                        "means the model as it is. Works with SUPIR Apply Control, tiled aggregation, SUPIR Restore and "
                        "KSampler; costs two model passes per step. UNet tensors only (no CLIP).",
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model (before or after SUPIR Apply Control)."),
                io.Mask.Input("mask", tooltip="1 where the inside stack applies, 0 where the outside stack does; "
                              "drawn on the image being restored (one mask, or one per image of the batch)."),
                *slot_inputs("strength", "Strength of this LoRA inside the mask (0 skips it).", "_inside"),
                *slot_inputs("strength", "Strength of this LoRA outside the mask (0 skips it).", "_outside"),
                io.Int.Input("feather", default=0, min=0, max=512, step=8,
                             tooltip="Softens the mask edge: std of a Gaussian blur in image pixels (applied at "
                                     "latent resolution, 8 px per latent pixel). 0: the mask as given."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the region blend."),
                io.String.Output(display_name="report",
                                 tooltip="Per stack and LoRA: tensors applied, weights patched, ignored keys."),
            ],
        )

    @classmethod
    def execute(cls, model, mask, feather, **slots) -> io.NodeOutput:
        model, report = apply_region_blend(model, mask, selected(slots, "strength", "_inside"),
                                           selected(slots, "strength", "_outside"), feather / 8)
        return io.NodeOutput(model, report)


NODES = [SUPIRLoraStack, SUPIRLoraInspect, SUPIRLoraMerge, SUPIRSaveBakedCheckpoint, SUPIRLoraRegionBlend]
