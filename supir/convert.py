"""Low-RAM weight files: a SUPIR, StableSR or CFW file rewritten as a new ``.safetensors`` file that holds only the
tensors the pack reads, in a chosen storage dtype.

The official files hold fp32 tensors: loaded for fp16 or fp8 storage, each tensor is read and converted into a new
copy in memory (2.7 GB for SUPIR at fp16). A file already in the storage dtype the loader uses is memory-mapped and
used in place: its pages are shared with the page cache, read as they are used, and never copied. The rewrite also
leaves out what the pack never reads: StableSR's checkpoint is a whole SD 2.1 (about 5 GB), of which the pack reads
the time-aware encoder and the SPADE layers (105.5M parameters); the CFW file's training loss; SUPIR's unused
``mask_LQ``. Every tensor is checked by name, shape and finiteness first, as the loaders check them.

Keys keep the official names, so other SUPIR and StableSR loaders read the new files too::

    python -m supir.convert SUPIR-v0Q.ckpt                          # -> SUPIR-v0Q_fp16.safetensors beside it
    python -m supir.convert stablesr_000117.ckpt stablesr_sr_bf16.safetensors --dtype bf16
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import torch

from .model.checkpoint import check_supir_weights, split_supir_state_dict
from .stablesr.cfw import FUSION_PREFIX, cfw_layout, check_cfw_finite, split_cfw_state_dict
from .stablesr.checkpoint import ENCODER_PREFIX, check_stablesr_weights, split_stablesr_state_dict
from .weights import STORAGE_DTYPES, WeightsFileError, read_state_dict, write_new_safetensors

DTYPES = {**STORAGE_DTYPES, "keep": None}
KINDS = ("SUPIR", "StableSR", "CFW")


@dataclass
class PackTensors:
    """The tensors of a weights file that the pack reads, under the official key names."""
    kind: str  # one of KINDS
    tensors: dict[str, torch.Tensor]


def pack_tensors(sd: dict[str, torch.Tensor], name: str) -> PackTensors:
    """Sort ``sd`` (a whole file's tensors) into what the pack reads, every tensor checked as the loaders check
    it; anything else in the file is left out.

    Raises:
        ValueError: ``sd`` is none of SUPIR's, StableSR's or CFW's files, or is damaged; the message names ``name``
            (a ``WeightsFileError``, or StableSR's checkpoint error).
    """
    keys = sd.keys()
    if any("control_model." in k or "project_modules." in k for k in keys):
        weights = split_supir_state_dict(sd, name)
        check_supir_weights(weights, name)
        return PackTensors("SUPIR", {
            **{("model." if k.startswith("control_model.") else "model.diffusion_model.") + k: v
               for k, v in weights.control.items()},
            **{f"first_stage_model.denoise_encoder.{k}": v for k, v in weights.denoise_encoder.items()}})
    if any(k.startswith(ENCODER_PREFIX) or ".spade." in k for k in keys):
        weights = split_stablesr_state_dict(sd, name)
        check_stablesr_weights(weights, name)
        return PackTensors("StableSR", {
            **{f"{ENCODER_PREFIX}{k}": v for k, v in weights.encoder.items()},
            **{f"model.diffusion_model.{k}": v for k, v in weights.spade.items()}})
    if any(k.startswith(FUSION_PREFIX) for k in keys):
        vae, fusion = split_cfw_state_dict(sd, name)
        check_cfw_finite(vae, fusion, name)
        cfw_layout(vae, fusion, name)
        return PackTensors("CFW", {**vae, **{f"decoder.{k}": v for k, v in fusion.items()}})
    raise WeightsFileError(f"{name}: not a SUPIR, StableSR or CFW file (no control_model, structcond_stage_model, "
                           f"SPADE or fusion_layer tensors); only those files are converted. SDXL and SD 2.x "
                           f"checkpoints are read as they are by Load Checkpoint.")


def default_name(source: str, dtype: str) -> str:
    """``SUPIR-v0Q.ckpt`` -> ``SUPIR-v0Q_fp16.safetensors`` (``keep``: ``SUPIR-v0Q.safetensors``)."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return f"{stem}.safetensors" if dtype == "keep" else f"{stem}_{dtype}.safetensors"


def convert_file(source: str, destination: str, dtype: str = "fp16") -> tuple[PackTensors, int]:
    """Write the pack's tensors of ``source`` to the new file ``destination`` (a ``.safetensors`` name), floating
    point tensors stored as ``dtype`` (a key of :data:`DTYPES`). Returns what was written and its size in bytes.

    Raises:
        ValueError: an unknown ``dtype``, or a ``destination`` that is not a ``.safetensors`` name.
        FileExistsError: ``destination`` exists; it is never overwritten (checked before reading ``source``).
        ValueError: ``source`` cannot be read or is not a SUPIR, StableSR or CFW file (as :func:`pack_tensors`).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}.")
    if not destination.lower().endswith(".safetensors"):
        raise ValueError(f"{destination}: the new file's name must end in .safetensors.")
    if os.path.lexists(destination):
        raise FileExistsError(f"{destination}: a file of that name exists and is never overwritten; choose another "
                              "name.")
    found = pack_tensors(read_state_dict(source), os.path.basename(source))
    metadata = {"format": "pt", "contents": found.kind, "converted_from": os.path.basename(source),
                "storage_dtype": dtype}
    return found, write_new_safetensors(destination, found.tensors, DTYPES[dtype], metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supir.convert",
        description="Rewrite a SUPIR, StableSR or CFW weights file (.ckpt or .safetensors) as a new .safetensors "
                    "file with only the tensors the pack reads, in the storage dtype you load with, so that "
                    "loading it is memory-mapped and smaller. The source is never changed; an existing file is "
                    "never overwritten.")
    parser.add_argument("source", help="the .ckpt or .safetensors file to read")
    parser.add_argument("destination", nargs="?",
                        help="the new .safetensors file (default: beside the source, named <source>_<dtype>)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16",
                        help="storage dtype of the floating-point tensors (default fp16, as SUPIR's fp16 files; "
                             "'keep' stores each as the source does)")
    args = parser.parse_args(argv)
    destination = args.destination or os.path.join(os.path.dirname(os.path.abspath(args.source)),
                                                    default_name(args.source, args.dtype))
    try:
        found, size = convert_file(args.source, destination, args.dtype)
    except (OSError, ValueError) as e:  # WeightsFileError is a ValueError; FileExistsError an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{destination}: {found.kind}, {len(found.tensors)} tensors, {size / 1e6:,.0f} MB "
          f"(source {os.path.getsize(args.source) / 1e6:,.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
