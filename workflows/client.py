"""Headless client: runs this pack's API-format workflows (``workflows/api/*.json``, or any API workflow) on a
ComfyUI server, one job per input image, and downloads the results.

    python -m workflows.client supir_restore_basic --input photos/ --output restored/ --seed 7
    python workflows/client.py my_workflow_api.json --input photo.png --set 8.steps=30

Each job uploads its image (``POST /upload/image``), submits the workflow with a prompt id made here
(``POST /prompt``), follows it over the websocket (``/ws?clientId=``) and fetches the saved images named in its
``/history`` entry (``GET /view``). Because the id is known before submitting, a job whose fate is unknown after a
lost connection is looked up in ``/queue`` and ``/history`` and submitted again only when the server no longer
knows it (a restarted server has lost its queue), so a job never runs twice on a live server.

Needs only the standard library and aiohttp (which ComfyUI already requires). Exit status: 0 when every job
succeeded, 1 when any failed (each failure is named) or the server could not be used (one line says why), 2 for
a bad command line, workflow or override.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp

SHIPPED = Path(__file__).resolve().parent / "api"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
SEED_INPUTS = ("seed", "noise_seed")
CHECKPOINT_INPUTS = ("ckpt_name",)
SUPIR_MODEL_INPUTS = ("supir_name",)
SCALE_INPUTS = {"SUPIRResize": "scale_by", "SUPIRUpscaleRestore": "scale", "ImageScaleBy": "scale_by"}
TEXT_ENCODER_INPUTS = ("text", "text_g", "text_l")
# A failed connection attempt or a dropped connection: retried, as the server may be restarting. A request the
# server does not answer within the timeout (aiohttp.SocketTimeoutError, one of these too) is not retried.
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class WorkflowError(ValueError):
    """The command line, the workflow file or an override cannot be used; nothing was submitted."""


class JobFailed(Exception):
    """A job ended without results: rejected by validation, failed in a node, interrupted, or lost too often."""


class ServerError(Exception):
    """The server cannot be used: unreachable for the whole retry window, silent past the timeout, or answering
    unlike ComfyUI. Ends the batch; the message is one line that names the server and what to do."""


@dataclass
class Overrides:
    """Values set on the workflow before submitting. ``sets`` holds (node id, input name, value) from --set."""
    seed: int | None = None
    positive: str | None = None
    negative: str | None = None
    scale: float | None = None
    checkpoint: str | None = None
    supir_model: str | None = None
    sets: list[tuple[str, str, Any]] = field(default_factory=list)


@dataclass
class Job:
    """One workflow run. ``prompt_id`` is chosen here, so a resubmission can be recognised by the server's queue
    and history; ``submissions`` counts POSTs that may have reached the server."""
    name: str
    workflow: dict
    image: Path | None = None
    prompt_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    submissions: int = 0
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    finished: bool = False


# --- workflow and overrides (no server needed) ---

def resolve_workflow_path(name: str) -> Path:
    """A path, or the name of a shipped API workflow (``supir_restore_basic``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{path.stem}.json"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.json")))
    raise WorkflowError(f"workflow {name!r} not found: give a path to an API-format JSON file or a shipped name "
                        f"({known})")


def load_workflow(path: Path) -> dict:
    """Reads an API-format workflow ({node id: {"class_type", "inputs"}}); the editor's format is refused."""
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise WorkflowError(f"{path} is in the editor's (UI) format; use its API twin (workflows/api/) or "
                            f"export it from ComfyUI with 'Export (API)'")
    bad = [nid for nid, node in workflow.items() if not (isinstance(node, dict) and "class_type" in node
                                                         and isinstance(node.get("inputs"), dict))] \
        if isinstance(workflow, dict) else ["(top level)"]
    if not workflow or bad:
        raise WorkflowError(f"{path} is not an API-format workflow (node(s) without class_type/inputs: "
                            f"{', '.join(bad) or 'no nodes'})")
    return workflow


def parse_set(text: str) -> tuple[str, str, Any]:
    """``NODE_ID.input=value`` -> (node id, input, value); the value is read as JSON when it parses (8, 1.5,
    true, "8"), else kept as text."""
    key, sep, raw = text.partition("=")
    node_id, dot, name = key.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowError(f"--set {text!r}: expected NODE_ID.input=value, e.g. 8.steps=30")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def is_link(value: Any) -> bool:
    """An input wired to another node's output: [node id, output slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def widget_targets(workflow: dict, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(node id, input) of every unlinked input with one of these names."""
    return [(nid, name) for nid, node in workflow.items() for name, value in node["inputs"].items()
            if name in names and not is_link(value)]


def text_targets(workflow: dict, socket: str) -> list[tuple[str, str]]:
    """Text inputs of CLIPTextEncode* nodes wired into an input named ``socket`` (``positive``/``negative``)."""
    sources = {value[0] for node in workflow.values() for name, value in node["inputs"].items()
               if name == socket and is_link(value)}
    return [(nid, name) for nid in sorted(sources) if workflow.get(nid, {}).get("class_type", "").startswith(
        "CLIPTextEncode") for name, value in workflow[nid]["inputs"].items()
        if name in TEXT_ENCODER_INPUTS and isinstance(value, str)]


def set_all(workflow: dict, targets: list[tuple[str, str]], value: Any, option: str, looked_for: str) -> None:
    if not targets:
        raise WorkflowError(f"{option}: no node of this workflow takes it (looked for {looked_for})")
    for nid, name in targets:
        workflow[nid]["inputs"][name] = value


def apply_overrides(workflow: dict, overrides: Overrides) -> dict:
    """A copy of ``workflow`` with the overrides set: every seed/noise_seed, the SUPIR caption or the text of the
    encoders wired to ``positive``, the SUPIR ``negative`` text or the encoders wired to ``negative``, the scale
    of the resize nodes, every ckpt_name and supir_name; --set values last, so they win. An override that matches
    nothing is an error."""
    out = copy.deepcopy(workflow)
    if overrides.seed is not None:
        set_all(out, widget_targets(out, SEED_INPUTS), overrides.seed, "--seed", "inputs seed, noise_seed")
    if overrides.positive is not None:
        set_all(out, widget_targets(out, ("caption",)) + text_targets(out, "positive"), overrides.positive,
                "--positive", "a caption input, or a CLIPTextEncode wired to a positive input")
    if overrides.negative is not None:
        targets = [(nid, name) for nid, name in widget_targets(out, ("negative",))
                   if isinstance(out[nid]["inputs"][name], str)] + text_targets(out, "negative")
        set_all(out, targets, overrides.negative, "--negative",
                "a negative text input, or a CLIPTextEncode wired to a negative input")
    if overrides.scale is not None:
        targets = [(nid, SCALE_INPUTS[node["class_type"]]) for nid, node in out.items()
                   if node["class_type"] in SCALE_INPUTS and not is_link(node["inputs"].get(
                       SCALE_INPUTS[node["class_type"]]))]
        set_all(out, targets, overrides.scale, "--scale",
                ", ".join(f"{kind}.{name}" for kind, name in SCALE_INPUTS.items()))
    if overrides.checkpoint is not None:
        set_all(out, widget_targets(out, CHECKPOINT_INPUTS), overrides.checkpoint, "--checkpoint",
                "input ckpt_name, e.g. Load Checkpoint")
    if overrides.supir_model is not None:
        set_all(out, widget_targets(out, SUPIR_MODEL_INPUTS), overrides.supir_model, "--supir-model",
                "input supir_name of SUPIR Load Model")
    for nid, name, value in overrides.sets:
        if nid not in out:
            raise WorkflowError(f"--set {nid}.{name}: no node {nid!r} (nodes: {', '.join(out)})")
        if is_link(out[nid]["inputs"].get(name)):
            raise WorkflowError(f"--set {nid}.{name}: that input is wired to node {out[nid]['inputs'][name][0]}; "
                                f"--set changes values, not links")
        out[nid]["inputs"][name] = value
    return out


def image_node(workflow: dict, node_id: str | None) -> str:
    """The LoadImage node that receives the input image: ``node_id``, or the only LoadImage."""
    if node_id is not None:
        if workflow.get(node_id, {}).get("class_type") != "LoadImage":
            raise WorkflowError(f"--image-node {node_id}: not a LoadImage node of this workflow")
        return node_id
    loaders = [nid for nid, node in workflow.items() if node["class_type"] == "LoadImage"]
    if len(loaders) != 1:
        raise WorkflowError("--input needs exactly one LoadImage node to receive the image; this workflow has "
                            f"{len(loaders)} ({', '.join(loaders) or 'none'}): choose one with --image-node")
    return loaders[0]


def list_inputs(path: Path) -> list[Path]:
    """An image file, or the images of a folder (sorted by name; not recursive)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise WorkflowError(f"--input {path}: no such file or folder")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise WorkflowError(f"--input {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    stems = [p.stem for p in images]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise WorkflowError(f"--input {path}: several images share a name ({', '.join(clashes)}), so their outputs "
                            f"would too; rename them")
    return images


def make_jobs(workflow: dict, workflow_path: Path, inputs: list[Path]) -> list[Job]:
    """One job per input image (outputs named after it), or one job named after the workflow without inputs."""
    if not inputs:
        return [Job(workflow_path.stem, workflow)]
    return [Job(path.stem, workflow, image=path) for path in inputs]


def validation_message(body: Any) -> str:
    """The server's answer to an invalid prompt (HTTP 400: error + node_errors) as readable lines."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error")
    if isinstance(error, dict):
        lines = [": ".join(filter(None, [error.get("message"), error.get("details")])) or str(error)]
    else:
        lines = [str(error)]
    for nid, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            text = ": ".join(filter(None, [e.get("message"), e.get("details")]))
            lines.append(f"  node {nid} ({info.get('class_type', '?')}): {text}")
    return "\n".join(lines)


def failure_message(entry: dict) -> str | None:
    """None for a successful history entry, else what went wrong (node, exception) from its status messages."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return None
    for event, data in status.get("messages", []):
        where = f"node {data.get('node_id')} ({data.get('node_type')})"
        if event == "execution_error":  # the exception's class without its module (a path, for custom nodes)
            kind = str(data.get("exception_type", "")).rpartition(".")[2]
            return f"execution error in {where}: {kind}: {str(data.get('exception_message', '')).strip()}"
        if event == "execution_interrupted":
            return f"interrupted in {where}"
    return f"ended with status {status.get('status_str')!r}"


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


# --- talking to the server ---

def one_line(text: str | bytes, limit: int = 200) -> str:
    """A server's answer or an error as one short line, to quote in a message."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def server_url(text: str) -> str:
    """The base URL of --server: http(s)://HOST[:PORT][/PATH], or HOST:PORT for http."""
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https"):
        problem = f"the scheme {parts.scheme!r} is not http or https"
    elif not parts.hostname or any(c.isspace() for c in url):
        problem = "no host name"
    elif port == 0:
        problem = "no valid port"
    elif "://" not in text and port is None:
        problem = "no scheme and no port"
    elif parts.query or parts.fragment:
        problem = "a query or fragment"
    else:
        return url.rstrip("/")
    raise WorkflowError(f"--server {text!r}: {problem}; give the address of a ComfyUI server, e.g. "
                        f"http://127.0.0.1:8188")


@dataclass
class Client:
    """A server connection: ``retry_for`` seconds of failed connections before giving up, ``timeout`` seconds
    for the server to answer a request, a status check (/queue, /history) every ``poll_interval`` seconds, at
    most ``max_resubmits`` resubmissions of a lost job."""
    url: str
    session: aiohttp.ClientSession
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    retry_for: float = 180.0
    timeout: float = 60.0
    poll_interval: float = 2.0
    max_resubmits: int = 1
    log: Callable[[str], None] = print

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self.client_id}"

    async def request(self, method: str, path: str, *, retry: bool = True,
                      make_data: Callable[[], Any] | None = None, **kwargs) -> tuple[int, bytes]:
        """(status, body); connection failures are retried with back-off for ``retry_for`` seconds (so only
        requests that are safe to repeat use ``retry``). ``make_data`` builds a fresh body for each attempt."""
        delay, first_failure = 0.5, None
        while True:
            try:
                data = make_data() if make_data else None
                async with self.session.request(method, self.url + path, data=data, **kwargs) as response:
                    return response.status, await response.read()
            except (aiohttp.SocketTimeoutError, aiohttp.ClientResponseError) as e:
                raise self.unusable(e, f"{method} {path}") from e
            except CONNECTION_ERRORS as e:
                if not retry:
                    raise
                first_failure = self.still_retrying(first_failure, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def still_retrying(self, first_failure: float | None, error: Exception) -> float:
        """The time of the first failure of this run of failures; says how much longer the client retries, and
        raises ServerError once ``retry_for`` seconds have passed since that failure."""
        now = time.monotonic()
        first_failure = first_failure or now
        left = self.retry_for - (now - first_failure)
        if left <= 0:
            raise self.unusable(error) from error
        self.log(f"server {self.url} unreachable ({type(error).__name__}), retrying for another {left:.0f} s")
        return first_failure

    def unusable(self, problem: Exception | str, request: str = "", answer: bytes | str = b"") -> ServerError:
        """The one line that says why the server cannot be used and what to do. ``problem`` is what went wrong
        with ``request`` ("GET /queue"): a text such as "HTTP 502" (``answer`` is quoted), a timeout, a reply
        that is not HTTP, or else a connection failure that outlasted the retry window."""
        if isinstance(problem, aiohttp.SocketTimeoutError):
            return ServerError(f"server {self.url} did not answer {request} within {self.timeout:g} s: check that "
                               f"ComfyUI runs there and is not stuck, or wait longer with --timeout")
        if isinstance(problem, aiohttp.ClientResponseError):  # aiohttp could not parse the reply
            return self.unusable("something that is not HTTP", request, problem.message)
        if isinstance(problem, str):
            return ServerError(f'server {self.url} answered {request} with {problem} ("{one_line(answer)}"): check '
                               f'that --server is the address of a ComfyUI server')
        return ServerError(f"server {self.url} unreachable for {self.retry_for:g} s ({type(problem).__name__}: "
                           f"{one_line(str(problem))}): start ComfyUI there, check --server, or wait longer with "
                           f"--retry-for")

    def json_object(self, request: str, body: bytes | str) -> dict:
        """The JSON object ComfyUI answers with; anything else is a server that does not speak its API."""
        try:
            value = json.loads(body)
        except ValueError:  # not JSON, or not UTF-8
            value = None
        if not isinstance(value, dict):
            raise self.unusable("something other than a JSON object", request, body)
        return value

    async def get_json(self, path: str) -> dict:
        status, body = await self.request("GET", path)
        if status != 200:
            raise self.unusable(f"HTTP {status}", f"GET {path}", body)
        return self.json_object(f"GET {path}", body)


async def upload_image(client: Client, path: Path) -> str:
    """Uploads to the server's input folder; returns the name LoadImage takes (the server renames a file that
    clashes with a different one of the same name, and reuses an identical one)."""
    content = path.read_bytes()

    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("image", content, filename=path.name)
        return data

    status, body = await client.request("POST", "/upload/image", make_data=form)
    if status != 200:
        raise JobFailed(f"uploading {path} failed: HTTP {status} {one_line(body)}")
    stored = client.json_object("POST /upload/image", body)
    if not isinstance(stored.get("name"), str):
        raise client.unusable("JSON without the stored file's name", "POST /upload/image", body)
    return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]


async def submit(client: Client, job: Job) -> None:
    """POST /prompt with the job's own prompt id. A connection that fails before reaching the server is raised
    as it is; any other connection loss leaves the outcome unknown, counts as a submission and is raised for
    ``reconcile`` to look up."""
    payload = {"prompt": job.workflow, "client_id": client.client_id, "prompt_id": job.prompt_id}
    try:
        status, body = await client.request("POST", "/prompt", retry=False, json=payload)
    except aiohttp.ClientConnectorError:
        raise
    except CONNECTION_ERRORS:
        job.submissions += 1
        raise
    job.submissions += 1
    if status == 400:
        try:
            details = validation_message(json.loads(body))
        except ValueError:
            details = one_line(body, 2000)
        raise JobFailed(f"the server rejected the workflow: {details}")
    if status != 200:
        raise JobFailed(f"POST /prompt answered HTTP {status}: {one_line(body)}")
    client.json_object("POST /prompt", body)


async def reconcile(client: Client, job: Job) -> dict | None:
    """The job's history entry once it has finished; None while it is queued or running. A job the server does
    not know — not submitted yet, or lost when the server restarted — is submitted (again, with the same id).
    The queue is read before the history: a job finishing in between is then still found."""
    queue = await client.get_json("/queue")
    if any(item[1] == job.prompt_id for item in queue.get("queue_running", []) + queue.get("queue_pending", [])):
        return None
    history = await client.get_json(f"/history/{job.prompt_id}")
    if job.prompt_id in history:
        return history[job.prompt_id]
    if job.submissions > client.max_resubmits:
        raise JobFailed(f"the server lost the job {job.submissions} times (restarts?); not submitting it again")
    if job.submissions:
        client.log(f"[{job.name}] the server does not know job {job.prompt_id} (restarted?): submitting it again")
    await submit(client, job)
    return None


def report(client: Client, job: Job, message: dict) -> bool:
    """Prints a websocket message about this job; True once the server says the job is over."""
    data = message.get("data") or {}
    if data.get("prompt_id") != job.prompt_id:
        return False
    kind = message.get("type")

    def node(nid: Any) -> str:
        return f"node {nid} ({job.workflow.get(str(nid), {}).get('class_type', '?')})"

    if kind == "executing":
        if data.get("node") is None:
            return True
        client.log(f"[{job.name}] executing {node(data['node'])}")
    elif kind == "progress":
        client.log(f"[{job.name}] {node(data.get('node'))}: {data.get('value')}/{data.get('max')}")
    elif kind == "execution_cached" and data.get("nodes"):
        client.log(f"[{job.name}] cached: {', '.join(map(str, data['nodes']))}")
    elif kind == "execution_error":
        client.log(f"[{job.name}] error in {node(data.get('node_id'))}: {data.get('exception_message', '')}")
    elif kind == "execution_interrupted":
        client.log(f"[{job.name}] interrupted in {node(data.get('node_id'))}")
    return False


async def follow(client: Client, job: Job, ws: aiohttp.ClientWebSocketResponse | None) -> dict | None:
    """Prints the job's progress until it finishes (returns its history entry) or the websocket closes (None).
    The status is also checked every ``poll_interval`` seconds, and only that way without a websocket."""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + client.poll_interval
    while True:
        remaining = next_check - loop.time()
        message = None
        if ws is None:
            await asyncio.sleep(max(remaining, 0))
        elif remaining > 0:
            try:  # wait_for, not receive(timeout=): aiohttp restarts that timeout at every heartbeat pong
                message = await asyncio.wait_for(ws.receive(), remaining)
            except asyncio.TimeoutError:
                pass
        if message is not None:
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR):
                return None
            if message.type != aiohttp.WSMsgType.TEXT or not report(
                    client, job, client.json_object("GET /ws", message.data)):
                continue  # binary previews, other messages
        else:
            next_check = loop.time() + client.poll_interval
        entry = await reconcile(client, job)
        if entry is not None:
            return entry


async def wait_for_result(client: Client, job: Job) -> dict:
    """Submits the job and follows it to its history entry, through lost connections and server restarts:
    after each reconnection the server's queue and history decide whether it still has the job."""
    delay, first_failure, use_websocket = 0.5, None, True
    while True:
        try:
            if use_websocket:
                async with client.session.ws_connect(client.ws_url, heartbeat=20) as ws:
                    first_failure, delay = None, 0.5
                    entry = await reconcile(client, job) or await follow(client, job, ws)
            else:
                entry = await reconcile(client, job) or await follow(client, job, None)
            if entry is not None:
                return entry
            client.log(f"[{job.name}] lost the connection to {client.url}; reconnecting")
        except aiohttp.WSServerHandshakeError:
            client.log(f"[{job.name}] no websocket at {client.url}; polling the job's status instead")
            use_websocket = False
            continue
        except (aiohttp.SocketTimeoutError, aiohttp.ClientResponseError) as e:  # of the websocket's handshake
            raise client.unusable(e, "GET /ws") from e
        except CONNECTION_ERRORS as e:
            first_failure = client.still_retrying(first_failure, e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


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


async def run_job(client: Client, job: Job, out_dir: Path, image_node_id: str | None = None,
                  previews: bool = False) -> None:
    """Upload, submit, follow, download; raises JobFailed or ServerError."""
    if job.image is not None:
        node_id = image_node(job.workflow, image_node_id)
        job.workflow = copy.deepcopy(job.workflow)
        job.workflow[node_id]["inputs"]["image"] = await upload_image(client, job.image)
    client.log(f"[{job.name}] submitting as {job.prompt_id}")
    entry = await wait_for_result(client, job)
    problem = failure_message(entry)
    if problem:
        raise JobFailed(problem)
    job.finished = True
    job.outputs = await download_outputs(client, job, entry, out_dir, previews)
    client.log(f"[{job.name}] done: " + (", ".join(map(str, job.outputs)) or "the workflow saved no files"))


async def run_batch(url: str, jobs: list[Job], out_dir: Path, *, image_node_id: str | None = None,
                    previews: bool = False, retry_for: float = 180.0, timeout: float = 60.0,
                    poll_interval: float = 2.0, max_resubmits: int = 1,
                    log: Callable[[str], None] = print) -> list[Job]:
    """Runs the jobs one after another; a failed job is recorded in ``job.error`` and the batch goes on. A
    server that cannot be used ends the batch with ServerError (the jobs not run yet keep ``error`` None)."""
    session_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(timeout=session_timeout) as session:
        client = Client(url.rstrip("/"), session, retry_for=retry_for, timeout=timeout,
                        poll_interval=poll_interval, max_resubmits=max_resubmits, log=log)
        for job in jobs:
            try:
                await run_job(client, job, out_dir, image_node_id, previews)
            except JobFailed as e:
                job.error = str(e)
    return jobs


# --- command line ---

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflows.client",
        description="Run an API-format ComfyUI workflow on a server, one job per input image, and download the "
                    "results. Exit status 0: all jobs succeeded; 1: a job failed or the server could not be used; "
                    "2: bad arguments or workflow.")
    parser.add_argument("workflow", help="API-format workflow JSON, or a shipped name such as supir_restore_basic")
    parser.add_argument("-s", "--server", default="http://127.0.0.1:8188", help="ComfyUI URL (%(default)s)")
    parser.add_argument("-i", "--input", type=Path,
                        help="image file, or a folder of images (one job each); uploaded and set on the LoadImage")
    parser.add_argument("-o", "--output", type=Path, default=Path("outputs"),
                        help="folder for the results, named after the inputs (%(default)s)")
    parser.add_argument("--image-node", help="LoadImage node id that receives the input (when there are several)")
    parser.add_argument("--seed", type=int, help="every seed / noise_seed input")
    parser.add_argument("--positive", help="the caption (SUPIR Conditioning, SUPIR Upscale & Restore) or the text "
                                           "encoders wired to a positive input")
    parser.add_argument("--negative", help="SUPIR Conditioning's negative text or the text encoders wired to a "
                                           "negative input")
    parser.add_argument("--scale", type=float, help="scale of SUPIR Resize For Restore, SUPIR Upscale & Restore, "
                                                    "Upscale Image By")
    parser.add_argument("--checkpoint", help="every ckpt_name (the SDXL checkpoint)")
    parser.add_argument("--supir-model", help="every supir_name (SUPIR Load Model)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="any input value (JSON when it parses, else text); repeatable; applied last")
    parser.add_argument("--previews", action="store_true", help="also download preview (temp) images")
    parser.add_argument("--retry-for", type=float, default=180.0,
                        help="seconds to keep retrying an unreachable server (%(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server to accept a connection or answer a request; a server "
                             "that stays silent longer ends the batch (%(default)s)")
    parser.add_argument("--max-resubmits", type=int, default=1,
                        help="times a job lost by a restarted server is submitted again (%(default)s)")
    parser.add_argument("--poll-interval", type=float, default=2.0,
                        help="seconds between checks of the job's status besides the websocket (%(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    return parser


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    return Overrides(seed=args.seed, positive=args.positive, negative=args.negative, scale=args.scale,
                     checkpoint=args.checkpoint, supir_model=args.supir_model,
                     sets=[parse_set(text) for text in args.sets])


def summary(jobs: list[Job], server_error: ServerError | None = None) -> tuple[str, int]:
    """The closing report and the exit status. A server that could not be used is one line that ends it, after
    the jobs that failed on their own."""
    failed = [f"FAILED {job.name}: {job.error}" for job in jobs if job.error]
    if server_error:
        succeeded = sum(job.finished and not job.error for job in jobs)
        last = f"error: {server_error} ({succeeded} of {len(jobs)} job(s) succeeded)"
        return "\n".join(failed + [last]), EXIT_FAILED
    lines = [f"{len(jobs) - len(failed)} of {len(jobs)} job(s) succeeded"] + failed
    return "\n".join(lines), EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = server_url(args.server)
        if args.timeout <= 0:
            raise WorkflowError(f"--timeout {args.timeout:g}: give a number of seconds above 0")
        path = resolve_workflow_path(args.workflow)
        workflow = apply_overrides(load_workflow(path), overrides_from_args(args))
        inputs = list_inputs(args.input) if args.input else []
        if inputs:
            image_node(workflow, args.image_node)
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    def log(message: str) -> None:
        if not args.quiet:
            print(message, flush=True)

    jobs = make_jobs(workflow, path, inputs)
    server_error = None
    try:
        asyncio.run(run_batch(server, jobs, args.output, image_node_id=args.image_node, previews=args.previews,
                              retry_for=args.retry_for, timeout=args.timeout, poll_interval=args.poll_interval,
                              max_resubmits=args.max_resubmits, log=log))
    except ServerError as e:
        server_error = e
    except KeyboardInterrupt:
        submitted = [job.prompt_id for job in jobs if job.submissions and not job.finished and not job.error]
        print("stopped; still on the server: " + (", ".join(submitted) or "nothing") +
              " (cancel with POST /interrupt or in ComfyUI's queue)", file=sys.stderr)
        return EXIT_INTERRUPTED
    text, code = summary(jobs, server_error)
    print(text, file=sys.stderr if code else sys.stdout, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
