"""The files a finished job saved (its history entry), their names in the output folder, and downloading them
there."""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from .errors import JobFailed, WorkflowError
from .server import Client
from .submission import Job


# Characters a file name cannot hold here or on another system: path separators, a drive's colon, NUL and the
# control characters, and what Windows refuses.
UNSAFE = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')


def output_files(entry: dict, previews: bool = False) -> list[tuple[str, dict]]:
    """(node id, {filename, subfolder, type}) of every file in a history entry's outputs, in node order; saved
    files ("output") only unless ``previews`` (also "temp"). Items whose fields are not text are left out."""
    kinds = ("output", "temp") if previews else ("output",)

    def order(nid: str) -> tuple:
        return (0, int(nid), "") if nid.isascii() and nid.isdigit() else (1, 0, nid)

    def usable(item: object) -> bool:
        return isinstance(item, dict) and isinstance(item.get("filename"), str) and all(
            isinstance(item.get(key, ""), str) for key in ("subfolder", "type"))

    return [(nid, item) for nid in sorted(entry.get("outputs", {}), key=order)
            for items in entry["outputs"][nid].values() if isinstance(items, list)
            for item in items if usable(item) and item.get("type", "output") in kinds]


def safe_file_name(name: str) -> str:
    """``name`` as one file name inside the output folder: unsafe characters become "_", and "", "." and ".."
    (which would name the folder or its parent) get a "_" in front."""
    name = UNSAFE.sub("_", name)
    return f"_{name}" if name in ("", ".", "..") else name


def output_names(name: str, files: list[tuple[str, dict]]) -> list[str]:
    """``name.ext`` for a single file; ``name_<node>_<i>.ext`` when the workflow gives several. The job name and
    the server's node ids and file names are made safe (``safe_file_name``), and names that then clash (or differ
    only in case) get a number."""
    def suffix(item: dict) -> str:
        return PurePosixPath(item["filename"].replace("\\", "/")).suffix

    if len(files) == 1:
        wanted = [name + suffix(files[0][1])]
    else:
        counts: dict[str, int] = {}
        wanted = []
        for nid, item in files:
            i = counts[nid] = counts.get(nid, -1) + 1
            wanted.append(f"{name}_{nid}_{i}{suffix(item)}")
    names: list[str] = []
    for want in map(safe_file_name, wanted):
        stem, ext = os.path.splitext(want)
        candidate, k = want, 1
        while candidate.casefold() in (n.casefold() for n in names):
            k += 1
            candidate = f"{stem}_{k}{ext}"
        names.append(candidate)
    return names


def check_output_folder(path: Path) -> None:
    """Refuses, before a job runs, an output folder that cannot be made: a file, or inside one, or not writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WorkflowError(f"--output {path}: {existing} is a file, not a folder; give a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkflowError(f"--output {path}: cannot write in {existing}; give a folder you can write in")


async def download_outputs(client: Client, job: Job, entry: dict, out_dir: Path, previews: bool = False
                           ) -> list[Path]:
    """Fetches the entry's files (GET /view) into ``out_dir`` as ``<job name>[_<node>_<i>].<ext>``; a file is
    written whole or not at all, and only inside ``out_dir``."""
    files = output_files(entry, previews)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for (nid, item), name in zip(files, output_names(job.name, files)):
        params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                  "type": item.get("type", "output")}
        status, body = await client.request("GET", "/view", params=params)
        if status != 200:
            raise JobFailed(f"downloading {item['filename']} of node {nid} failed: HTTP {status}")
        target = out_dir / name
        partial = out_dir / f".{name}.part"
        try:
            partial.write_bytes(body)
            os.replace(partial, target)
        except OSError as e:
            raise JobFailed(f"cannot write {target}: {e.strerror or e}") from e
        saved.append(target)
    return saved
