"""The files a finished job saved (its history entry), their names in the output folder, and downloading them
there."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import JobFailed
from .server import Client
from .submission import Job


def output_files(entry: dict, previews: bool = False) -> list[tuple[str, dict]]:
    """(node id, {filename, subfolder, type}) of every file in a history entry's outputs, in node order; saved
    files ("output") only unless ``previews`` (also "temp")."""
    kinds = ("output", "temp") if previews else ("output",)

    def order(nid: str) -> tuple:
        return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)

    return [(nid, item) for nid in sorted(entry.get("outputs", {}), key=order)
            for items in entry["outputs"][nid].values() if isinstance(items, list)
            for item in items if isinstance(item, dict) and "filename" in item and item.get("type", "output") in kinds]


def output_names(name: str, files: list[tuple[str, dict]]) -> list[str]:
    """``name.ext`` for a single file; ``name_<node>_<i>.ext`` when the workflow gives several."""
    if len(files) == 1:
        return [name + Path(files[0][1]["filename"]).suffix]
    counts: dict[str, int] = {}
    names = []
    for nid, item in files:
        i = counts[nid] = counts.get(nid, -1) + 1
        names.append(f"{name}_{nid}_{i}{Path(item['filename']).suffix}")
    return names


async def download_outputs(client: Client, job: Job, entry: dict, out_dir: Path, previews: bool = False
                           ) -> list[Path]:
    """Fetches the entry's files (GET /view) into ``out_dir`` as ``<job name>[_<node>_<i>].<ext>``; a file is
    written whole or not at all."""
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
        partial.write_bytes(body)
        os.replace(partial, target)
        saved.append(target)
    return saved
