"""One ComfyUI server as seen by the batch: a plain class that the batch command turns into a Ray actor (so this
module does not import Ray). It runs one job at a time through the client's session code (upload, exactly-once
submission, wait, download) and returns the output files' bytes, so no file system is shared with the driver. With
``launch`` it starts and owns a ComfyUI process on its node (on the GPU Ray gave the actor) and restarts it when
it dies. An optional quality gate scores each output on the server with SUPIR Image Quality Metrics and re-runs
the job with the next seed while the score is below the threshold."""
from __future__ import annotations

import asyncio
import copy
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..headless.errors import JobFailed, ServerError
from ..headless.outputs import download_outputs
from ..headless.server import Client, open_client, upload_image
from ..headless.submission import Job, failure_message, wait_for_result
from ..headless.workflow import SEED_INPUTS, Overrides, apply_overrides, image_node, is_link, \
    widget_targets

NO_REFERENCE = ("clipiqa", "musiq", "maniqa")
FIDELITY = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
GATE_NODE = "supir_batch_gate"


@dataclass
class Gate:
    """--retry-below METRIC=VALUE --gate-tries N."""
    metric: str
    threshold: float
    tries: int


def parse_gate(text: str, tries: int) -> Gate:
    metric, sep, value = text.partition("=")
    metric = metric.strip().lower()
    try:
        threshold = float(value)
    except ValueError:
        threshold = None
    if not sep or threshold is None or metric not in NO_REFERENCE + FIDELITY:
        raise ValueError(f"--retry-below {text!r}: expected METRIC=VALUE with METRIC one of "
                         f"{', '.join(NO_REFERENCE + FIDELITY)} (e.g. clipiqa=0.45)")
    if tries < 1:
        raise ValueError(f"--gate-tries {tries}: give at least 1")
    return Gate(metric, threshold, tries)


def gated_workflow(workflow: dict, gate: Gate, image_node_id: str) -> dict:
    """The workflow with SUPIR Image Quality Metrics appended on the image its SaveImage node saves: no-reference
    metrics score it alone, fidelity metrics against the input image (same size needed)."""
    savers = [nid for nid, node in workflow.items() if node["class_type"] == "SaveImage"]
    if len(savers) != 1 or not is_link(workflow[savers[0]]["inputs"].get("images")):
        raise JobFailed(f"--retry-below needs exactly one SaveImage node; this workflow has {len(savers)}")
    image = workflow[savers[0]]["inputs"]["images"]
    reference = image if gate.metric in NO_REFERENCE else [image_node_id, 0]
    out = copy.deepcopy(workflow)
    out[GATE_NODE] = {"class_type": "SUPIRImageMetrics", "inputs": {
        "image": image, "reference": reference, "crop_border": 0,
        "learned_metric": gate.metric if gate.metric in NO_REFERENCE else "none"}}
    return out


def gate_score(entry: dict, metric: str) -> float:
    """The metric's batch mean from the metrics node's report in a history entry."""
    texts = (entry.get("outputs", {}).get(GATE_NODE) or {}).get("text") or []
    for text in texts:
        match = re.search(rf"^{metric}: mean (\S+)", str(text), re.M)
        if match:
            return float(match.group(1))
    raise JobFailed(f"the quality gate found no {metric} score in the job's results")


def base_seed(workflow: dict) -> int | None:
    values = [workflow[nid]["inputs"][name] for nid, name in widget_targets(workflow, SEED_INPUTS)]
    return values[0] if values and isinstance(values[0], int) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the ComfyUI child: SIGTERM when the actor's process ends, however it ends (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerWorker:
    """A server at ``url``, or a ComfyUI it launches from ``launch`` (a ComfyUI folder) with ``comfy_args``."""

    def __init__(self, url: str | None = None, launch: str | None = None, comfy_args: tuple[str, ...] = (),
                 cpu: bool = False, options: dict | None = None, start_timeout: float = 600.0):
        self.options = dict(options or {})
        self.launch, self.comfy_args, self.cpu = launch, list(comfy_args), cpu
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        if launch:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.folders = tempfile.mkdtemp(prefix="comfyui_batch_")
            self.start_server()
        else:
            self.url = url

    # --- a launched ComfyUI ---

    def server_command(self) -> list[str]:
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch"] + (["--cpu"] if self.cpu else [])
        # a server's own folders (its SaveImage counters are its own) and database, unless given
        for d in ("input", "output", "temp", "user"):
            if f"--{d}-directory" not in self.comfy_args:
                os.makedirs(os.path.join(self.folders, d), exist_ok=True)
                cmd += [f"--{d}-directory", os.path.join(self.folders, d)]
        if "--database-url" not in self.comfy_args:
            cmd += ["--database-url", "sqlite:///" + os.path.join(self.folders, "comfyui.db")]
        return cmd + self.comfy_args

    def start_server(self) -> None:
        log = open(os.path.join(self.folders, "comfyui.log"), "ab")
        self.process = subprocess.Popen(self.server_command(), cwd=self.launch, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI in {self.launch} exited with {self.process.returncode}; see "
                                   f"{os.path.join(self.folders, 'comfyui.log')}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise TimeoutError(f"ComfyUI in {self.launch} did not serve within {self.start_timeout:g} s")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.launch:
            shutil.rmtree(self.folders, ignore_errors=True)

    def pid(self) -> int | None:
        """The launched ComfyUI's process id (for tests and diagnostics)."""
        return self.process.pid if self.process else None

    # --- jobs ---

    def address(self) -> str:
        return self.url

    def run(self, spec: dict) -> dict:
        """Runs one job; returns {status: done|failed|server, outputs: [(name, bytes)], error, scores, seconds}."""
        started = time.monotonic()
        lines: list[str] = []
        try:
            result = asyncio.run(run_async(self, spec, lines.append))
        except JobFailed as e:
            result = {"status": "failed", "error": str(e)}
        except ServerError as e:
            result = {"status": "server", "error": str(e)}
        except asyncio.TimeoutError:
            result = {"status": "server", "error": f"server {self.url} did not finish the job within "
                                                   f"{spec['job_timeout']:g} s (--job-timeout)"}
        notes = [line for line in lines if "restarting it" in line or "does not know job" in line]
        result.update(server=self.url, seconds=round(time.monotonic() - started, 3), notes=notes)
        return result


async def watch(worker: ServerWorker, log) -> None:
    """Restarts the launched ComfyUI when it dies; the client's retries and reconciliation carry the job over."""
    while True:
        await asyncio.sleep(1.0)
        if worker.process is not None and worker.process.poll() is not None:
            worker.restarts += 1
            log(f"ComfyUI at {worker.url} exited with {worker.process.returncode}: restarting it")
            await asyncio.to_thread(worker.start_server)


async def run_async(worker: ServerWorker, spec: dict, log) -> dict:
    """One job on the worker's server, under the job's timeout; a launched server is watched meanwhile."""
    watcher = asyncio.ensure_future(watch(worker, log)) if worker.launch else None
    try:
        async with open_client(worker.url, log=log, **worker.options) as client:
            return await asyncio.wait_for(run_gated(client, spec), spec["job_timeout"])
    finally:
        if watcher:
            watcher.cancel()


async def run_gated(client: Client, spec: dict) -> dict:
    """Upload, then submit, wait and score until the gate passes or the tries run out; the best try's files."""
    with tempfile.TemporaryDirectory(prefix="comfyui_batch_job_") as tmp:
        image = Path(tmp) / "in" / spec["input_name"]
        image.parent.mkdir()
        image.write_bytes(spec["input_bytes"])
        workflow = spec["workflow"]
        node_id = image_node(workflow, spec.get("image_node"))
        workflow = copy.deepcopy(workflow)
        workflow[node_id]["inputs"]["image"] = await upload_image(client, image)
        gate: Gate | None = spec.get("gate")
        tries = gate.tries if gate else 1
        seed = base_seed(workflow)
        if gate and seed is None and tries > 1:
            raise JobFailed("--gate-tries needs a seed input to change; this workflow has none")
        scores, best = [], None
        for n in range(tries):
            graph = workflow
            if gate:
                graph = gated_workflow(apply_overrides(workflow, Overrides(seed=seed + n))
                                       if n else workflow, gate, node_id)
            # the same id for the same job, attempt and try: a task Ray retries finds its prompt on the server
            job = Job(spec["name"].rpartition("/")[2], graph,
                      prompt_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{spec['job']}/{spec['attempt']}/{n}")))
            entry = await wait_for_result(client, job)
            problem = failure_message(entry)
            if problem:
                raise JobFailed(problem)
            if not gate:
                best = (job, entry)
                break
            score = gate_score(entry, gate.metric)
            scores.append({"seed": seed + n if seed is not None else None, gate.metric: score})
            if best is None or score > best[2]:
                best = (job, entry, score)
            if score >= gate.threshold:
                break
        saved = await download_outputs(client, best[0], best[1], Path(tmp) / "out")
        outputs = [(p.name, p.read_bytes()) for p in saved]
    return {"status": "done", "outputs": outputs, "scores": scores}
