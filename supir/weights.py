"""Reading weight files: the one reader behind every file the pack loads (SUPIR files, LoRAs, metric weights,
training checkpoints), and the check that a file's tensors fit the network they are for.

``.safetensors``/``.sft`` files hold tensors only. Anything else is read as a torch pickle with ``weights_only``,
so code or foreign objects in it are refused, never run; a file's content decides over its name (a safetensors file
named ``.ckpt`` is read as safetensors, a pickle named ``.safetensors`` is refused as a pickle). Every error names
the file and says what to do.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
from typing import Callable

import torch

SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
                  "fp8_e4m3fn": torch.float8_e4m3fn}


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message names the file and says what to do."""


class UnsafeWeightsError(WeightsFileError):
    """A pickle holding code or Python objects besides tensors: refused, and never to be used."""


class CorruptWeightsError(WeightsFileError):
    """A file that cannot be read: truncated, damaged or not a weights file."""


def is_safetensors(path: str) -> bool:
    return path.lower().endswith(SAFETENSORS_EXTENSIONS)


def read_state_dict(path: str, dtype: torch.dtype | None = None,
                    converts: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or a torch pickle; a pickled ``{"state_dict": {...}}`` is unwrapped and
    entries that are not tensors (step counters, configs) are dropped.

    A safetensors file is memory-mapped: its tensors are the file's pages. With ``dtype``, the floating tensors
    whose names ``converts`` accepts are instead read from disk one at a time and converted as they are read, so
    the file's pages never stay resident beside the converted copy (the peak is the converted tensors plus the
    largest one as stored); the others stay memory-mapped. Pickles are returned as stored."""
    if is_safetensors(path):
        if dtype is None:
            return read_safetensors(path)[0]
        return _read_safetensors_converted(path, dtype, converts)
    loaded = _read_pickle(path)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise WeightsFileError(f"{path}: holds a {type(loaded).__name__}, not a dict of tensors; use the released "
                               "weights file.")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def read_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file."""
    import safetensors
    _check_exists(path)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged headers and short files
        raise _unreadable_safetensors(path, e) from None


def _read_safetensors_converted(path: str, dtype: torch.dtype, converts: Callable[[str], bool]) -> dict:
    mapped, _ = read_safetensors(path)  # checks the file whole; tensors left as they are stay memory-mapped
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        converted = [key for key, stored in mapped.items() if stored.is_floating_point() and stored.dtype != dtype
                     and converts(key) and header[key]["dtype"] in _TORCH_DTYPES]
        # one buffer for every stored tensor in turn: many freed buffers would stay in the allocator's heap
        buffer = torch.empty(max((mapped[key].nbytes for key in converted), default=0), dtype=torch.uint8)
        tensors = dict(mapped)
        for key in converted:
            info = header[key]
            begin, end = info["data_offsets"]
            f.seek(8 + header_size + begin)
            f.readinto(memoryview(buffer[:end - begin].numpy()))
            stored = buffer[:end - begin].view(_TORCH_DTYPES[info["dtype"]]).reshape(info["shape"])
            tensors[key] = stored.to(dtype)
    return tensors


def check_safetensors(path: str) -> None:
    """A safetensors file whose header is whole and whose size is the header's, checked without reading the tensors
    (for files another library loads, e.g. transformers)."""
    import safetensors
    _check_exists(path)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu"):
            pass
    except Exception as e:  # a short file fails here: safetensors checks the data covers the header's offsets
        raise _unreadable_safetensors(path, e) from None


def _unreadable_safetensors(path: str, error: Exception) -> WeightsFileError:
    """A safetensors file that does not open: a torch pickle under a safetensors name is read weights-only, so that
    one holding code is refused as such; anything else is damaged."""
    if not _is_pickle(path):
        return _corrupt(path, error)
    try:
        _read_pickle(path)
    except WeightsFileError as refused:
        return refused
    return WeightsFileError(f"{path}: a torch pickle renamed to .safetensors, not a safetensors file. Use the "
                            "model's real .safetensors file, or give this one its own extension (.ckpt or .pt) "
                            "where the loader takes pickles.")


def safetensors_keys(path: str) -> list[str] | None:
    """The tensor names in a safetensors file's header, or None when it has no readable header."""
    import safetensors
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception:
        return None


def _read_pickle(path: str):
    _check_exists(path)
    if not _is_pickle(path):  # refused below would read as "holds code": say what the file is instead
        if safetensors_keys(path) is not None:  # a safetensors file under another name: its content decides
            return read_safetensors(path)[0]
        raise _corrupt(path, ValueError("it starts as neither a torch file nor a safetensors file"))
    try:
        if is_safetensors(path):  # torch.load reads a path of that name as safetensors, an open file as a pickle
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as e:  # only torch's weights-only unpickler raises it: it refused something
        raise UnsafeWeightsError(
            f"{path}: refused to load. The file holds code or Python objects besides tensors"
            f"{_refusal_detail(e)}, or is not a weights file at all; a weights file never needs them. Do not use "
            "this file: delete it, and use a .safetensors file or one from the model's official source.") from None
    except Exception as e:  # torch raises several types for truncated zips, short files and foreign formats
        raise _corrupt(path, e) from e


def _refusal_detail(error: pickle.UnpicklingError) -> str:
    """The Python global the pickle names, when torch's message gives one. Only the name is kept: the rest of the
    message advises loading unsafely."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f" (it names {found.group(1)})" if found else ""


def _corrupt(path: str, error: Exception) -> CorruptWeightsError:
    reason = str(error).splitlines()[0] if str(error) else "the file ends early"
    return CorruptWeightsError(f"{path}: cannot be read, the file is corrupt or truncated, or not a weights file "
                               f"({type(error).__name__}: {reason}). Download it again and check its size.")


def _check_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise WeightsFileError(f"{path}: no such file.")


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_pickle(path: str) -> bool:
    """Starts as torch files do: a zip (torch.save) or a pickle's protocol opcode (legacy torch.save, bare pickles)."""
    with open(path, "rb") as f:
        start = f.read(4)
    return start == b"PK\x03\x04" or start[:1] == pickle.PROTO


def count_indexed(keys, pattern: str) -> int:
    """How many distinct indices the first group of ``pattern`` (matched at the start of each key) takes: e.g.
    the blocks of a stack, ``count_indexed(sd, r"blocks\\.(\\d+)\\.")``. Configs are derived from a file's keys so."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def layout_problems(expected: dict, found: dict, expected_label: str = "expected") -> list[str]:
    """What differs between ``{key: shape}`` maps: missing, unexpected and mis-shaped tensors, each named."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} ({expected_label} {list(expected[k])})" for k in expected
             if k in found and tuple(found[k]) != tuple(expected[k])]
    return [f"{label} {len(keys)}: {names(keys, most)}"
            for label, keys, most in (("missing", missing, 8), ("unexpected", extra, 8), ("wrong shape", wrong, 4))
            if keys]


def check_layout(expected: dict, found: dict, what: str, name: str) -> None:
    """Compare ``{key: shape}`` maps; a missing, unexpected or mis-shaped tensor is an error naming it."""
    if problems := layout_problems(expected, found):
        raise WeightsFileError(f"{name}: the tensors do not fit the {what}: " + "; ".join(problems)
                               + ". The file is damaged or from another model.")


def names(keys: list, most: int = 8) -> str:
    """The first ``most`` of ``keys``, and how many more there are."""
    shown = ", ".join(keys[:most])
    return shown + (f" … (+{len(keys) - most} more)" if len(keys) > most else "")


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64",
                       torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                       torch.bool: "BOOL"}
_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


def write_new_safetensors(path: str, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                          metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` to a new safetensors file at ``path``, floating-point ones cast to ``dtype`` (None keeps
    each tensor's own), one tensor at a time: memory-mapped sources are paged in and written without a second
    copy of the whole file in memory. The file appears at ``path`` only when complete, and never replaces one that
    exists. Returns the bytes written.

    Raises:
        FileExistsError: ``path`` exists (before anything is written, and again if one appeared meanwhile).
    """
    if os.path.lexists(path):
        raise _exists(path)

    def stored(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    header, offset = {}, 0
    for key, t in tensors.items():
        if stored(t) not in _SAFETENSORS_DTYPES:
            raise WeightsFileError(f"{key}: tensors of type {stored(t)} cannot be stored in a safetensors file.")
        size = t.numel() * stored(t).itemsize
        header[key] = {"dtype": _SAFETENSORS_DTYPES[stored(t)], "shape": list(t.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it

    partial = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.partial")
    try:
        with open(partial, "xb") as f:
            f.write(len(encoded).to_bytes(8, "little") + encoded)
            for key, t in tensors.items():
                data = t.detach().to("cpu", stored(t)).contiguous().reshape(-1)
                f.write(memoryview(data.view(torch.uint8).numpy()))
        _publish(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return len(encoded) + 8 + offset


def _publish(partial: str, path: str) -> None:
    """Give the finished ``partial`` file its name ``path``, failing rather than replacing a file of that name."""
    try:
        os.link(partial, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # file systems without hard links (FAT, some network shares): rename, having checked
        if os.path.lexists(path):
            raise _exists(path) from None
        os.rename(partial, path)


def _exists(path: str) -> FileExistsError:
    return FileExistsError(f"{path}: a file of that name exists and is never overwritten; choose another name.")
