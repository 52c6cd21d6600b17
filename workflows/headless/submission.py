"""One job on the server, exactly once: submitted with a prompt id chosen here, followed over the websocket (and
by polling), looked up in the queue and history after a lost connection and submitted again only when the server
no longer knows it; the server's answers (validation errors, a failed run) as readable messages."""
from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .errors import JobFailed
from .models import any_missing, missing_file, where_it_goes
from .server import CONNECTION_ERRORS, Client, model_folders, one_line


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


def validation_message(body: Any, server_folders: dict[str, list[str]] | None = None) -> str:
    """The server's answer to an invalid prompt (HTTP 400: error + node_errors) as readable lines; a model file
    the server does not have is followed by where it goes (``server_folders``: the server's models folders by
    name, quoted when given)."""
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
            missing = missing_file(info.get("class_type", ""), e)
            if missing:
                lines.append("    " + where_it_goes(*missing, server_folders or {}))
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
            answer = json.loads(body)
        except ValueError:
            raise JobFailed(f"the server rejected the workflow: {one_line(body, 2000)}") from None
        folders = await model_folders(client) if any_missing(answer) else {}
        raise JobFailed(f"the server rejected the workflow: {validation_message(answer, folders)}")
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
