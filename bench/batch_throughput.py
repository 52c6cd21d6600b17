"""The batch command (``python -m workflows.batch``) against live CPU ComfyUI servers with the tiny test models.

Run from the repository (needs Ray, ComfyUI and ``taskset``)::

    COMFYUI_PATH=/path/to/ComfyUI python -m bench.batch_throughput [--images 16] [--steps 8] [--rows 10000]

(a) throughput with one and with two servers, each pinned to its own core (``taskset``, one thread): images per
minute from the batch's first job to its end (Ray's start-up excluded, and given separately); goal >= 1.8x with
two. (b) per-job overhead of the batch over the plain client on the same server with the same images: goal <= 5 %.
(c) and (d) a 10,000-row CSV manifest whose jobs the output folder's manifest records as done: wall time of the
resume (goal <= 10 s, 0 submissions) and the driver's peak resident memory (goal <= 300 MB), sampled every 20 ms.
The tiny restore is not SUPIR's real cost; it stands for a job long enough to dwarf the HTTP and Ray round trips.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HOST_TESTS = REPO / "tests" / "host"
TINY = ["--checkpoint", "tiny_sdxl.safetensors", "--supir-model", "tiny_supir_fp16.safetensors"]


def fast(steps: int) -> list[str]:
    return [*TINY, "--set", "8.preset=Custom", "--set", f"8.steps={steps}", "--set", "8.sampler=RestoreEDM"]


def models_base(folder: Path) -> str:
    """A ComfyUI base folder with this pack, the test shim, a tiny SDXL checkpoint and a tiny SUPIR file (as the
    host tests' server fixture builds them)."""
    sys.modules.setdefault("supir_restore", types.ModuleType("supir_restore")).__path__ = [str(REPO)]
    sys.path.insert(0, str(HOST_TESTS))
    import safetensors.torch
    from conftest import write_tiny_checkpoint  # sets ComfyUI up from COMFYUI_PATH
    from tiny_models import full_vae, supir_state_dict, tiny_clip, tiny_sdxl
    for d in ("custom_nodes", "models/checkpoints", "models/supir"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    os.symlink(REPO, folder / "custom_nodes" / "supir_restore")
    os.symlink(HOST_TESTS / "shim_pack", folder / "custom_nodes" / "supir_test_shim")
    vae = full_vae(seed=5)
    write_tiny_checkpoint(folder / "models/checkpoints/tiny_sdxl.safetensors", tiny_sdxl(seed=0), vae,
                          tiny_clip(seed=2))
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in supir_state_dict(vae).items()},
                                str(folder / "models/supir/tiny_supir_fp16.safetensors"))
    return str(folder)


def pinned_server(base: str, folders: Path, core: int):
    from live_server import ComfyServer

    class Pinned(ComfyServer):
        def command(self) -> list[str]:
            return ["taskset", "-c", str(core), *super().command()]

    server = Pinned(os.environ["COMFYUI_PATH"], base, folders=str(folders))
    server.start()
    return server


def write_images(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    return folder


def run(command: list[str], start_marker: str | None = None) -> dict:
    """Runs a command; its wall time, the time after the line containing ``start_marker`` (stderr), the peak RSS
    of the command's own process, and its output."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(process.pid)
    peak, marked, err_lines = 0, None, []

    def read_stderr():
        nonlocal marked
        for line in process.stderr:
            err_lines.append(line)
            if start_marker and marked is None and start_marker in line:
                marked = time.monotonic()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out = process.stdout.read()
    reader.join()
    ended = time.monotonic()
    err = "".join(err_lines)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{out}\n{err[-3000:]}")
    return {"wall": ended - started, "work": ended - marked if marked else None, "peak_mb": peak / 2**20,
            "stdout": out, "stderr": err}


def batch(urls: list[str], inputs: Path, out: Path, extra: list[str]) -> dict:
    return run([sys.executable, "-m", "workflows.batch", "supir_restore_basic", "--servers", ",".join(urls),
                "--input", str(inputs), "--output", str(out), *extra], start_marker="server(s):")


def client(url: str, inputs: Path, out: Path, extra: list[str]) -> dict:
    return run([sys.executable, "-m", "workflows.client", "supir_restore_basic", "--server", url, "--input",
                str(inputs), "--output", str(out), "-q", *extra])


def all_done_manifest(tmp: Path, rows: int) -> tuple[Path, Path]:
    """A CSV of ``rows`` images with a seed each, and an output folder whose manifest records every job as done."""
    sys.path.insert(0, str(REPO))
    from workflows.batch.cli import build_parser
    from workflows.batch.jobs import Manifest, input_items, job_id, job_workflow
    from workflows.headless.cli import overrides_from_args
    from workflows.headless.workflow import apply_overrides, load_workflow, resolve_workflow_path
    images = write_images(tmp / "many", rows, 8)
    table = images / "list.csv"
    table.write_text("input,seed\n" + "".join(f"img{i:05d}.png,{i}\n" for i in range(rows)))
    out = tmp / "many_out"
    args = build_parser().parse_args(["supir_restore_basic", "--input", str(table), "--output", str(out), *TINY])
    workflow = apply_overrides(load_workflow(resolve_workflow_path(args.workflow)), overrides_from_args(args))
    manifest = Manifest(out)
    out.mkdir()
    with open(manifest.path, "w") as f:
        for item in input_items(table):
            jid = job_id(item.image.read_bytes(), job_workflow(workflow, item))
            (out / f"{item.name}.png").write_bytes(b"done")
            f.write(json.dumps({"job": jid, "input": str(item.image), "name": item.name,
                                "outputs": [f"{item.name}.png"], "server": "http://127.0.0.1:9", "attempts": 1,
                                "seconds": 1.0, "status": "done", "error": None}) + "\n")
    return table, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--skip-servers", action="store_true", help="only the 10,000-row resume")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"{args.images} images of {args.size}² px, tiny restore with {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_servers:
            base = models_base(tmp / "base")
            servers = [pinned_server(base, tmp / f"server{core}", core) for core in (0, 1)]
            try:
                inputs = write_images(tmp / "in", args.images, args.size)
                client(servers[0].url, inputs, tmp / "warm", [*fast(args.steps), "--seed", "1"])  # loads models
                client(servers[1].url, inputs, tmp / "warm1", [*fast(args.steps), "--seed", "1"])
                plain = client(servers[0].url, inputs, tmp / "plain", [*fast(args.steps), "--seed", "2"])
                one = batch([servers[0].url], inputs, tmp / "one", [*fast(args.steps), "--seed", "3"])
                two = batch([s.url for s in servers], inputs, tmp / "two", [*fast(args.steps), "--seed", "4"])
            finally:
                for s in servers:
                    s.stop()
            n = args.images
            print(f"(a) 1 server: {60 * n / one['work']:.1f} img/min ({one['work']:.1f} s for {n}; with Ray's "
                  f"start-up {one['wall']:.1f} s); 2 servers: {60 * n / two['work']:.1f} img/min "
                  f"({two['work']:.1f} s; {two['wall']:.1f} s): speed-up {one['work'] / two['work']:.2f}x")
            print(f"(b) plain client {plain['wall'] / n:.2f} s/job, batch on 1 server {one['work'] / n:.2f} s/job: "
                  f"overhead {100 * (one['work'] / plain['wall'] - 1):+.1f} % (with Ray's start-up "
                  f"{100 * (one['wall'] / plain['wall'] - 1):+.1f} %)")
            print(f"    driver peak RSS during the 2-server batch: {two['peak_mb']:.0f} MB")
        started = time.monotonic()
        table, out = all_done_manifest(tmp, args.rows)
        print(f"    (the {args.rows} images, outputs and manifest written in {time.monotonic() - started:.0f} s)")
        resume = run([sys.executable, "-m", "workflows.batch", "supir_restore_basic", "--servers",
                      "http://127.0.0.1:9", "--input", str(table), "--output", str(out), *TINY],
                     start_marker="server(s):")
        summary = resume["stdout"].strip().splitlines()[0]
        print(f"(c,d) resume of {args.rows} done jobs: {resume['wall']:.1f} s wall, driver peak RSS "
              f"{resume['peak_mb']:.0f} MB; {summary}")


if __name__ == "__main__":
    main()
