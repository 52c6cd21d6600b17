"""The batch's jobs without Ray or a server: inputs streamed from a folder or a CSV/JSONL manifest, each job's
stable id, and the JSONL record beside the outputs that makes a batch resumable and exactly-once."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..headless.errors import WorkflowError
from ..headless.workflow import IMAGE_SUFFIXES, Overrides, apply_overrides, parse_set

MANIFEST_NAME = "batch_manifest.jsonl"
# per-row columns of an input manifest that are client overrides; any other column named NODE_ID.input is a --set
ROW_OVERRIDES = {"caption": "positive", "positive": "positive", "negative": "negative", "seed": "seed",
                 "scale": "scale", "checkpoint": "checkpoint", "supir_model": "supir_model"}
ROW_KEYS = {"input", "output", "set", *ROW_OVERRIDES}


@dataclass
class Item:
    """One input: the image, the output name (relative to --output, without suffix) and the row's overrides."""
    image: Path
    name: str
    overrides: Overrides = field(default_factory=Overrides)
    where: str = ""  # "photos/a.png" or "list.csv line 4", for messages


def folder_items(folder: Path, recursive: bool) -> Iterator[Item]:
    """The images of a folder in name order, one directory at a time; the output tree mirrors the input's."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(dirs) if recursive else []
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                rel = path.relative_to(folder)
                yield Item(path, rel.with_suffix("").as_posix(), where=str(path))


def row_overrides(row: dict, where: str) -> Overrides:
    unknown = [k for k in row if k not in ROW_KEYS and "." not in k]
    if unknown:
        raise WorkflowError(f"{where}: unknown column(s) {', '.join(unknown)}; use input, output, "
                            f"{', '.join(sorted(ROW_OVERRIDES))}, set, or NODE_ID.input")
    values: dict[str, Any] = {}
    sets = []
    for key, value in row.items():
        if value is None or value == "" or key in ("input", "output"):
            continue
        try:
            if key in ("seed",):
                values["seed"] = int(value)
            elif key == "scale":
                values["scale"] = float(value)
            elif key in ROW_OVERRIDES:
                values[ROW_OVERRIDES[key]] = str(value)
            elif key == "set":
                texts = value if isinstance(value, list) else str(value).split(";")
                sets += [parse_set(t.strip()) for t in texts if t.strip()]
            else:
                sets.append(parse_set(f"{key}={value if isinstance(value, str) else json.dumps(value)}"))
        except ValueError as e:
            raise WorkflowError(f"{where}: column {key}: {e}") from e
    return Overrides(sets=sets, **values)


def manifest_rows(path: Path) -> Iterator[tuple[dict, str]]:
    """(row, "file line N") from a CSV with a header or a JSONL file (one object a line), read lazily."""
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            for row in reader:
                yield {k.strip(): v for k, v in row.items() if k}, f"{path} line {reader.line_num}"
        else:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise WorkflowError(f"{path} line {n}: not JSON ({e})") from e
                    if not isinstance(row, dict):
                        raise WorkflowError(f"{path} line {n}: expected a JSON object")
                    yield row, f"{path} line {n}"


def manifest_items(path: Path) -> Iterator[Item]:
    """Rows of an input manifest: ``input`` (relative to the manifest's folder), optional ``output`` and
    overrides."""
    for row, where in manifest_rows(path):
        if not row.get("input"):
            raise WorkflowError(f"{where}: no 'input' column (the image path)")
        image = path.parent / str(row["input"])
        name = str(row.get("output") or Path(str(row["input"])).with_suffix("").as_posix())
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise WorkflowError(f"{where}: output {name!r} must be a relative name inside --output")
        yield Item(image, name, row_overrides(row, where), where)


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".csv", ".jsonl")


def input_items(path: Path, recursive: bool = False) -> Iterator[Item]:
    """The items of --input: a folder, an input manifest (.csv, .jsonl) or one image."""
    if is_manifest(path):
        return manifest_items(path)
    if path.is_dir():
        return folder_items(path, recursive)
    if path.is_file():
        return iter([Item(path, path.stem, where=str(path))])
    raise WorkflowError(f"--input {path}: no such folder, image or manifest (.csv, .jsonl)")


def job_workflow(workflow: dict, item: Item) -> dict:
    """The workflow of one item: the batch's workflow with the row's overrides (which win)."""
    return apply_overrides(workflow, item.overrides) if item.overrides != Overrides() else workflow


def job_id(image_bytes: bytes, workflow: dict) -> str:
    """Stable over runs: the input's bytes and the workflow after overrides, as canonical JSON."""
    digest = hashlib.sha256(image_bytes)
    digest.update(json.dumps(workflow, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:24]


class Manifest:
    """``batch_manifest.jsonl`` in the output folder: one JSON object per finished attempt (job, input, name,
    outputs, server, attempts, seconds, status, error, scores), appended and fsynced, so a batch stopped at any
    point (Ctrl-C, a crash) is resumed by running the same command. The last record of a job wins; a torn last
    line is ignored."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.last: dict[str, dict] = {}
        self.owned: set[str] = set()  # output files recorded by any job of this batch (relative paths)
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    self.last[record["job"]] = record
                    self.owned.update(record.get("outputs", []))

    def foreign_files(self) -> list[str]:
        """Files in the output folder that no job of this batch wrote (besides the manifest and partial files)."""
        found = []
        for root, _, files in os.walk(self.out_dir):
            for name in files:
                rel = (Path(root) / name).relative_to(self.out_dir).as_posix()
                if rel != MANIFEST_NAME and not name.endswith(".part") and rel not in self.owned:
                    found.append(rel)
        return sorted(found)

    def done(self, job: str) -> bool:
        record = self.last.get(job)
        return bool(record and record["status"] == "done"
                    and all((self.out_dir / o).is_file() for o in record["outputs"]))

    def attempts(self, job: str) -> int:
        return self.last.get(job, {}).get("attempts", 0)

    def append(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.last[record["job"]] = record
        self.owned.update(record.get("outputs", []))


def write_outputs(out_dir: Path, name: str, files: list[tuple[str, bytes]], owned: set[str]) -> list[str]:
    """Writes a job's downloaded files as ``<name><suffix>`` (``files`` carry the client's output names for a job
    called by the last part of ``name``); each whole or not at all, never over a file this batch did not write."""
    folder = (out_dir / name).parent
    targets = [(folder / file_name).relative_to(out_dir).as_posix() for file_name, _ in files]
    for rel in targets:
        if (out_dir / rel).exists() and rel not in owned:
            raise FileExistsError(f"{out_dir / rel} exists and was not written by this batch; not overwriting it")
    folder.mkdir(parents=True, exist_ok=True)
    for rel, (_, body) in zip(targets, files):
        target = out_dir / rel
        partial = target.with_name(f".{target.name}.part")
        partial.write_bytes(body)
        os.replace(partial, target)
    return targets
