"""A ComfyUI server over HTTP: its address, requests retried while it is unreachable, the one line that says why
it cannot be used, and uploading an image to its input folder."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from .errors import JobFailed, ServerError, WorkflowError

# A failed connection attempt or a dropped connection: retried, as the server may be restarting. A request the
# server does not answer within the timeout (aiohttp.SocketTimeoutError, one of these too) is not retried.
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


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


@asynccontextmanager
async def open_client(url: str, *, retry_for: float = 180.0, timeout: float = 60.0, poll_interval: float = 2.0,
                      max_resubmits: int = 1, log: Callable[[str], None] = print) -> AsyncIterator[Client]:
    """A Client of the server at ``url`` (as ``server_url`` gives it) on a session of its own, closed on exit."""
    session_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(timeout=session_timeout) as session:
        yield Client(url.rstrip("/"), session, retry_for=retry_for, timeout=timeout, poll_interval=poll_interval,
                     max_resubmits=max_resubmits, log=log)


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


async def model_folders(client: Client) -> dict[str, list[str]]:
    """The server's models folders by name (GET /experiment/models); empty when it does not say."""
    status, body = await client.request("GET", "/experiment/models")
    try:
        folders = json.loads(body) if status == 200 else []
    except ValueError:
        folders = []
    return {f["name"]: f["folders"] for f in folders if isinstance(f, dict) and isinstance(f.get("name"), str)
            and isinstance(f.get("folders"), list)} if isinstance(folders, list) else {}
