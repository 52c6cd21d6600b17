"""SUPIR Convert Weights File: a SUPIR, StableSR or CFW file rewritten as a smaller, memory-mapped .safetensors."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..supir.checks import check_file_name
from ..supir.convert import DTYPES, convert_file, default_name
from .stablesr_nodes import stablesr_file_names, stablesr_file_path
from .supir_nodes import CATEGORY, supir_file_names, supir_file_path

SUFFIX = ".safetensors"
# the folder group a listed file comes from: (its path, the pack's folder under models/ the new file goes to)
GROUPS = {"supir": (supir_file_path, "supir"), "stablesr": (stablesr_file_path, "stablesr")}
LOADERS = {"SUPIR": "SUPIR Load Model", "StableSR": "StableSR Load Model", "CFW": "StableSR Load CFW"}


def source_options() -> list[str]:
    return [*(f"supir/{n}" for n in supir_file_names()), *(f"stablesr/{n}" for n in stablesr_file_names())]


class SUPIRConvertWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRConvertWeights",
            display_name="SUPIR Convert Weights File",
            category=CATEGORY,
            description="Writes a new .safetensors file holding only what the pack reads from a SUPIR, StableSR or "
                        "CFW file, in the precision you load with. Loading it is memory-mapped instead of unpickled "
                        "(far less system RAM) and the file is smaller (StableSR's: the SR parts of a whole SD 2.1 "
                        "checkpoint). The source is left as it is, and no existing file is overwritten; pick the new "
                        "file in the loader afterwards.",
            inputs=[
                io.Combo.Input("source", options=source_options(),
                               tooltip="The file to convert: supir/… from models/supir (or model_patches), stablesr/… "
                                       "from models/stablesr (or a *stablesr* file in models/checkpoints)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="fp16",
                               tooltip="Storage precision of the new file: fp16 (as SUPIR's fp16 files) suits most "
                                       "GPUs; bf16 for bf16 GPUs; fp8_e4m3fn is the smallest (loads as fp8 storage); "
                                       "fp32 and keep lose nothing."),
                io.String.Input("new_name", default="",
                                tooltip="Name of the new file (no folder; .safetensors is added). Empty: the source's "
                                        "name with the dtype, e.g. SUPIR-v0Q_fp16. It goes to models/supir or "
                                        "models/stablesr."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="What was written, where, and its size.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, source, dtype, new_name) -> io.NodeOutput:
        group, _, name = source.partition("/")
        if group not in GROUPS:
            raise ValueError(f"source {source!r} must start with supir/ or stablesr/ (pick it from the list).")
        find_path, folder = GROUPS[group]
        if new_name.strip():
            stem = new_name.strip().removesuffix(SUFFIX)
            check_file_name(stem, "new_name", SUFFIX)
            file_name = stem + SUFFIX
        else:
            file_name = default_name(name, dtype)
        destination = os.path.join(folder_paths.models_dir, folder, file_name)
        if os.path.lexists(destination):
            raise FileExistsError(f"new_name: {destination} exists and is never overwritten; give another name.")
        path = find_path(name)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        found, size = convert_file(path, destination, dtype)
        report = (f"wrote {destination}: {found.kind}, {len(found.tensors)} tensors, {dtype}, {size / 1e6:,.0f} MB "
                  f"(source {os.path.getsize(path) / 1e6:,.0f} MB). Pick {file_name} in {LOADERS[found.kind]}.")
        return io.NodeOutput(report, ui=ui.PreviewText(report))


NODES = [SUPIRConvertWeights]
