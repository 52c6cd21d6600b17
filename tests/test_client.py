"""Tier 1: the headless client (``python -m workflows.client``, the package workflows/headless): overrides on the
shipped API workflows, argument parsing, error messages, and the protocol — upload, submit, websocket progress,
history, downloads, retries without duplicated jobs — against an in-process fake of ComfyUI's HTTP and websocket
API run on its own thread. The tests and the fake wait for events (a request arrived, a line was printed), never
for time to pass."""
import asyncio
import copy
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the headless client needs aiohttp (ComfyUI's own dependency)")
from aiohttp import web  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from supir_restore.workflows.headless.cli import build_parser, main, overrides_from_args, summary  # noqa: E402
from supir_restore.workflows.headless.errors import ServerError, WorkflowError  # noqa: E402
from supir_restore.workflows.headless.models import model_folder  # noqa: E402
from supir_restore.workflows.headless.outputs import output_files, output_names  # noqa: E402
from supir_restore.workflows.headless.run import make_jobs, run_batch  # noqa: E402
from supir_restore.workflows.headless.submission import Job, failure_message, validation_message  # noqa: E402
from supir_restore.workflows.headless.workflow import (SHIPPED, Overrides, apply_overrides, image_node,  # noqa: E402
                                                        list_inputs, load_workflow, parse_set, resolve_workflow_path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASIC = SHIPPED / "supir_restore_basic.json"


def basic() -> dict:
    return load_workflow(BASIC)


def png(text: str) -> bytes:
    """A 2x2 PNG file carrying ``text``, so that each photo's bytes differ."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


# --- workflow and overrides ---

def test_parse_set_reads_json_values_and_keeps_text():
    assert parse_set("8.steps=30") == ("8", "steps", 30)
    assert parse_set("8.cfg_end=7.5") == ("8", "cfg_end", 7.5)
    assert parse_set("7.caption_per_line=true") == ("7", "caption_per_line", True)
    assert parse_set("8.preset=Lightning Quality") == ("8", "preset", "Lightning Quality")
    assert parse_set('7.caption="42"') == ("7", "caption", "42")
    assert parse_set("7.caption=a=b") == ("7", "caption", "a=b")
    assert parse_set("12:3.seed=1") == ("12:3", "seed", 1)
    for bad in ("8.steps", "steps=3", ".steps=3", "8.=3"):
        with pytest.raises(WorkflowError, match="NODE_ID.input=value"):
            parse_set(bad)
    for not_finite in ("NaN", "Infinity", "-Infinity", "1e999"):
        with pytest.raises(WorkflowError, match=f"8.cfg={not_finite}': {not_finite} is not a finite number"):
            parse_set(f"8.cfg={not_finite}")


def test_overrides_find_the_nodes_of_the_shipped_workflow():
    workflow = basic()
    original = copy.deepcopy(workflow)
    out = apply_overrides(workflow, Overrides(
        seed=123, positive="a harbour at dusk", negative="blurry", checkpoint="juggernaut.safetensors",
        supir_model="SUPIR-v0F.ckpt"))
    assert workflow == original, "the loaded workflow must not be modified"
    assert out["8"]["inputs"]["seed"] == 123
    assert out["7"]["inputs"]["caption"] == "a harbour at dusk"
    assert out["7"]["inputs"]["negative"] == "blurry"
    assert out["2"]["inputs"]["ckpt_name"] == "juggernaut.safetensors"
    assert out["3"]["inputs"]["supir_name"] == "SUPIR-v0F.ckpt"
    changed = {(nid, k) for nid in out for k, v in out[nid]["inputs"].items() if original[nid]["inputs"].get(k) != v}
    assert changed == {("8", "seed"), ("7", "caption"), ("7", "negative"), ("2", "ckpt_name"), ("3", "supir_name")}


def test_set_wins_adds_optional_inputs_and_refuses_links_and_unknown_nodes():
    sets = [parse_set(s) for s in ("8.seed=5", "8.preset=Custom", "8.steps=2", "5.tile_size=512")]
    out = apply_overrides(basic(), Overrides(seed=1, sets=sets))
    assert (out["8"]["inputs"]["seed"], out["8"]["inputs"]["preset"], out["8"]["inputs"]["steps"]) == (5, "Custom", 2)
    assert out["5"]["inputs"]["tile_size"] == 512
    with pytest.raises(WorkflowError, match="wired to node 2"):
        apply_overrides(basic(), Overrides(sets=[("9", "vae", "x")]))
    with pytest.raises(WorkflowError, match="no node '99'"):
        apply_overrides(basic(), Overrides(sets=[("99", "seed", 1)]))


def test_an_override_that_matches_nothing_is_an_error():
    with pytest.raises(WorkflowError, match="--scale nan: give a finite number"):
        apply_overrides(stock_graph(), Overrides(scale=float("nan")))
    with pytest.raises(WorkflowError, match="--scale: no node.*SUPIRResize.scale_by"):
        apply_overrides(basic(), Overrides(scale=2.0))
    no_seed = {nid: node for nid, node in basic().items() if node["class_type"] != "SUPIRRestore"}
    with pytest.raises(WorkflowError, match="--seed"):
        apply_overrides(no_seed, Overrides(seed=1))


def stock_graph() -> dict:
    """A stock text-to-image graph: the prompts are CLIPTextEncode nodes wired to KSampler's positive/negative."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "old positive", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "old negative", "clip": ["1", 1]}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                    "noise_seed": 0, "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "ImageScaleBy", "inputs": {"image": ["7", 0], "upscale_method": "lanczos",
                                                        "scale_by": 1.0}},
        "7": {"class_type": "SUPIRUpscaleRestore", "inputs": {"scale": 2.0, "caption": "", "seed": 3}},
        "8": {"class_type": "SUPIRResize", "inputs": {"image": ["6", 0], "scale_by": 2.0, "multiple": "64"}},
    }


def test_prompts_follow_the_links_to_text_encoders_and_scale_finds_resize_nodes():
    out = apply_overrides(stock_graph(), Overrides(positive="cat", negative="dog", scale=4.0, seed=9))
    assert out["2"]["inputs"]["text"] == "cat" and out["3"]["inputs"]["text"] == "dog"
    assert out["7"]["inputs"]["caption"] == "cat"
    scales = [out[nid]["inputs"][name] for nid, name in (("6", "scale_by"), ("7", "scale"), ("8", "scale_by"))]
    assert scales == [4.0] * 3
    assert out["4"]["inputs"]["noise_seed"] == 9 and out["7"]["inputs"]["seed"] == 9


def test_load_workflow_refuses_the_ui_format_and_non_workflows(tmp_path):
    with pytest.raises(WorkflowError, match="editor's \\(UI\\) format"):
        load_workflow(SHIPPED.parent / "supir_restore_basic.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(WorkflowError, match="not an API-format workflow.*1"):
        load_workflow(bad)
    bad.write_text("{not json")
    with pytest.raises(WorkflowError, match="cannot read workflow"):
        load_workflow(bad)


def test_shipped_names_resolve_to_the_api_twins(tmp_path):
    assert resolve_workflow_path("supir_restore_lightning") == SHIPPED / "supir_restore_lightning.json"
    own = tmp_path / "mine.json"
    own.write_text("{}")
    assert resolve_workflow_path(str(own)) == own
    with pytest.raises(WorkflowError, match="supir_restore_basic, supir_restore_fidelity"):
        resolve_workflow_path("nope")


def test_the_image_goes_to_the_only_load_image_or_the_chosen_one():
    workflow = basic()
    assert image_node(workflow, None) == "4"
    workflow["12"] = {"class_type": "LoadImage", "inputs": {"image": "ref.png"}}
    with pytest.raises(WorkflowError, match="has 2 \\(4, 12\\).*--image-node"):
        image_node(workflow, None)
    assert image_node(workflow, "12") == "12"
    with pytest.raises(WorkflowError, match="--image-node 8"):
        image_node(workflow, "8")


def test_a_workflow_without_an_image_input_says_so_and_help_lists_those_that_take_one(capsys, tmp_path):
    (tmp_path / "hq.png").write_bytes(png("hq"))
    assert main(["supir_benchmark", "--input", str(tmp_path), "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --input: this workflow takes no input image (it has no LoadImage node); run it without "
                   "--input. It reads its images from ComfyUI's input directory: node 4 (SUPIRLoadImageFolder) "
                   "folder 'benchmark' (--set 4.folder=NAME changes it)\n")
    text = " ".join(build_parser().format_help().split())
    takes = re.search(r"Shipped workflows that take it: (.*?); that take no input image: (.*?) -o", text)
    assert takes and "supir_restore_basic" in takes[1].split(", ") and "stablesr_upscale_x4" in takes[1].split(", ")
    assert takes[2] == "supir_benchmark, supir_train_lora"


def test_input_folders_list_images_and_refuse_clashing_names(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(png(name))
    assert [p.name for p in list_inputs(tmp_path)] == ["a.JPG", "b.png"]
    (tmp_path / "a.png").write_bytes(png("a"))
    with pytest.raises(WorkflowError, match="share a name \\(a\\)"):
        list_inputs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkflowError, match="no images"):
        list_inputs(empty)


def test_server_messages_become_readable_reports():
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": "", "extra_info": {}},
            "node_errors": {"2": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                              "details": "ckpt_name: 'x.safetensors' not in ['a.safetensors']",
                                              "extra_info": {}}],
                                  "dependent_outputs": ["10"], "class_type": "CheckpointLoaderSimple"}}}
    assert validation_message(body) == (
        "Prompt outputs failed validation\n  node 2 (CheckpointLoaderSimple): Value not in list: "
        "ckpt_name: 'x.safetensors' not in ['a.safetensors']")
    error = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_error", {"node_id": "3", "node_type": "SUPIRLoader",
                             "exception_type": "/x/supir_restore.supir.checkpoint.SUPIRCheckpointError",
                             "exception_message": "corrupt.safetensors is not a safetensors file\n"}]]}}
    assert failure_message(error) == ("execution error in node 3 (SUPIRLoader): SUPIRCheckpointError: "
                                             "corrupt.safetensors is not a safetensors file")
    interrupted = {"status": {"status_str": "error", "messages": [
        ["execution_interrupted", {"node_id": "8", "node_type": "SUPIRRestore"}]]}}
    assert failure_message(interrupted) == "interrupted in node 8 (SUPIRRestore)"
    assert failure_message({"status": {"status_str": "success", "messages": []}}) is None


def test_outputs_are_named_after_the_job():
    saved = {"filename": "restored_00001_.png", "subfolder": "supir", "type": "output"}
    entry = {"outputs": {"11": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
                         "10": {"images": [saved]}}}
    files = output_files(entry)
    assert [nid for nid, _ in files] == ["10"] and output_names("photo", files) == ["photo.png"]
    files = output_files(entry, previews=True)
    assert output_names("photo", files) == ["photo_10_0.png", "photo_11_0.png"]


def test_output_names_stay_one_file_inside_the_output_folder():
    """Node ids and file names come from the server: separators, a drive's colon, NUL, '.' and '..' cannot make a
    name that leaves the folder, and names that become equal are numbered."""
    files = [(nid, {"filename": name}) for nid, name in (
        ("out/a", "a.png"), ("out_a", "b.png"), ("x/../../escaped", "../../e.png"), ("12:3", "c.p\\ng"),
        ("..", "..\\..\\d.PNG"), ("C:evil", "f.png"), ("a\x00b", "g.png"))]
    assert output_names("photo", files) == [
        "photo_out_a_0.png", "photo_out_a_0_2.png", "photo_x_.._.._escaped_0.png", "photo_12_3_0",
        "photo_.._0.PNG", "photo_C_evil_0.png", "photo_a_b_0.png"]
    assert output_names("..", [("9", {"filename": "noext"})]) == ["_.."]
    assert output_names("été (1)", [("9", {"filename": "r.png"})]) == ["été (1).png"], "a user's name is kept"


def test_loader_inputs_name_their_model_folders():
    assert model_folder("SUPIRLoader", "supir_name") == "supir"
    assert model_folder("CheckpointLoaderSimple", "ckpt_name") == "checkpoints"
    assert model_folder("SUPIRLoraRegionBlend", "lora_inside_3") == "loras"
    assert model_folder("SUPIRLoadVLM", "model_name") == "vlm"
    assert model_folder("UpscaleModelLoader", "model_name") is None, "model_name means a VLM in SUPIR Load VLM only"
    assert model_folder("SUPIRRestore", "preset") is None


def test_command_line_becomes_overrides():
    args = build_parser().parse_args([
        "supir_restore_basic", "--input", "in", "--seed", "4", "--positive", "a cat", "--negative", "dog",
        "--checkpoint", "c.safetensors", "--supir-model", "s.ckpt", "--set", "8.steps=3", "--set", "8.preset=Custom",
        "--scale", "2", "--retry-for", "10", "--max-resubmits", "2"])
    overrides = overrides_from_args(args)
    assert overrides == Overrides(seed=4, positive="a cat", negative="dog", scale=2.0,
                                         checkpoint="c.safetensors", supir_model="s.ckpt",
                                         sets=[("8", "steps", 3), ("8", "preset", "Custom")])
    assert (str(args.input), args.retry_for, args.max_resubmits, args.server) == ("in", 10.0, 2,
                                                                                  "http://127.0.0.1:8188")


def test_bad_arguments_exit_2_before_contacting_a_server(capsys, tmp_path):
    assert main(["supir_restore_basic", "--scale", "2", "--server", "http://127.0.0.1:9"]) == 2
    assert "--scale: no node" in capsys.readouterr().err
    assert main(["supir_restore_basic", "--input", str(tmp_path / "missing")]) == 2
    assert main(["supir_restore_basic", "--timeout", "0", "--server", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.endswith("error: --timeout 0: give a number of seconds above 0\n")


@pytest.mark.parametrize("option, value, problem", [
    ("--retry-for", "-1", "give a number of seconds of 0 or more"),
    ("--retry-for", "inf", "give a number of seconds of 0 or more"),
    ("--poll-interval", "0", "give a number of seconds above 0"),
    ("--timeout", "nan", "give a number of seconds above 0"),
    ("--max-resubmits", "-1", "give a count of 0 or more")])
def test_numbers_that_cannot_work_exit_2_before_contacting_the_server(fake, photos, tmp_path, capsys, option, value,
                                                                      problem):
    assert run(fake, option, value, input_path=photos, out=tmp_path / "out") == 2
    assert capsys.readouterr().err == f"error: {option} {value}: {problem}\n"
    assert fake.requests == []


@pytest.mark.parametrize("server, problem", [
    ("ftp://127.0.0.1:8188", "the scheme 'ftp' is not http or https"),
    ("http://:8188", "no host name"),
    ("http://127.0.0.1:99999", "no valid port"),
    ("http://127.0.0.1:port", "no valid port"),
    ("8188", "no scheme and no port"),
    ("http://127.0.0.1:8188/?x=1", "a query or fragment")])
def test_an_invalid_server_url_exits_2_with_one_line(capsys, server, problem):
    assert main(["supir_restore_basic", "--server", server, "--retry-for", "0"]) == 2
    assert capsys.readouterr().err == (f"error: --server {server!r}: {problem}; give the address of a ComfyUI "
                                       f"server, e.g. http://127.0.0.1:8188\n")


def test_a_server_error_ends_the_report_in_one_line_after_the_jobs_that_failed_on_their_own():
    jobs = [Job("a", {}, finished=True), Job("b", {}, error="interrupted in node 8 (SUPIRRestore)"),
            Job("c", {})]
    problem = ServerError("server http://127.0.0.1:8188 did not answer GET /queue within 60 s: ...")
    assert summary(jobs, problem) == (
        "FAILED b: interrupted in node 8 (SUPIRRestore)\n"
        "error: server http://127.0.0.1:8188 did not answer GET /queue within 60 s: ... (1 of 3 job(s) succeeded)", 1)


@pytest.mark.parametrize("how", ["module", "script"])
def test_the_cli_runs_as_module_and_as_script(how):
    cmd = ["-m", "workflows.client"] if how == "module" else [os.path.join(REPO, "workflows", "client.py")]
    result = subprocess.run([sys.executable, *cmd, "supir_restore_basic", "--set", "8.x"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "expected NODE_ID.input=value" in result.stderr, result.stderr


# --- the protocol, against a fake ComfyUI ---

# A bound on waiting for something that should happen at once; reaching it fails the test (instead of hanging it).
WAIT = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background:
    """``function(*args, **kwargs)`` on a thread of its own, so the test can act while it runs."""

    def __init__(self, function, *args, **kwargs):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self.run, args=(function, args, kwargs), daemon=True)
        self.thread.start()

    def run(self, function, args, kwargs):
        try:
            self.value = function(*args, **kwargs)
        except BaseException as e:  # handed to the test by result()
            self.error = e

    def result(self):
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), f"still running after {WAIT} s"
        if self.error is not None:
            raise self.error
        return self.value


class Printed:
    """The client's log (``run_batch(log=...)``); ``wait_for`` a line, as it is printed."""

    def __init__(self):
        self.lines, self.changed = [], threading.Condition()

    def __call__(self, line):
        with self.changed:
            self.lines.append(line)
            self.changed.notify_all()

    def wait_for(self, pattern):
        with self.changed:
            assert self.changed.wait_for(lambda: any(re.fullmatch(pattern, line) for line in self.lines), WAIT), \
                f"no line like {pattern!r} within {WAIT} s: {self.lines}"


class LoopThread:
    """An asyncio loop on a thread of its own, for a server the client under test talks to."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=WAIT)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=WAIT)


class RawServer(LoopThread):
    """A port that accepts connections, then sends ``reply`` (bytes that are not HTTP) or, when None, nothing at
    all; counts the connections."""

    def __init__(self, reply=None):
        super().__init__()
        self.reply, self.connections, self.writers = reply, 0, []
        self.server = self.call(asyncio.start_server(self.serve, "127.0.0.1", self.port))

    async def serve(self, reader, writer):
        self.connections += 1
        self.writers.append(writer)
        if self.reply is not None:
            writer.write(self.reply)
        await reader.read()  # until either side hangs up

    async def close(self):
        self.server.close()
        for writer in self.writers:
            writer.close()
            await writer.wait_closed()

    def stop(self):
        self.call(self.close())
        super().stop()


ERROR_PAGE = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>\n"


class FakeComfy(LoopThread):
    """ComfyUI's client protocol in-process (as server.py and execution.py speak it): /upload/image, /prompt
    (prompt_id taken from the request, 400 with error + node_errors), /ws?clientId= with executing / progress /
    execution_* messages, /queue, /history/{id}, /view. Records every request (``requests``, ``posts``, what
    /queue answered) and lets the test wait for one (``wait_until``). Knobs: ``outcome`` of each run, ``reject``
    (a validation body), ``hold`` (a run waits in node 8 until ``release()``), ``drop_prompt_responses`` (queue
    the job, then cut the connection before answering), ``restarts_at_start`` (that many times, "restart" when a
    job starts: the websockets close, the queue and history are lost, and the next request is cut off as by a
    server not back yet), ``websocket`` (False: /ws answers 404), ``garbage`` ((path prefix, status): those
    requests get an HTML error page), ``saved`` ((node id, history item) pairs a run reports instead of its one
    restored image, each served with its own bytes), ``model_folders`` (what GET /experiment/models answers;
    None: 404)."""

    def __init__(self, listen=True):
        super().__init__()
        self.outcome, self.reject, self.websocket, self.hold = "success", None, True, False
        self.drop_prompt_responses = self.restarts_at_start = 0
        self.down, self.garbage, self.saved, self.model_folders = False, None, None, None
        self.uploads, self.files, self.prompts = {}, {}, {}
        self.requests: list[str] = []     # "GET /queue", ... in arrival order
        self.posts: list[dict] = []       # every POST /prompt body
        self.queued: list[str] = []       # every prompt id put in a queue (across restarts)
        self.duplicates: list[str] = []   # ids posted while the server still had them
        self.queue_answers: list[list[str]] = []  # the queue as each GET /queue saw it
        self.queue, self.history, self.sockets = [], {}, {}
        self.changed = threading.Condition()
        self.wake, self.released = asyncio.Event(), asyncio.Event()
        if listen:
            self.listen()

    def listen(self):
        self.call(self.start())

    async def start(self):
        app = web.Application(middlewares=[self.record])
        app.router.add_post("/upload/image", self.upload)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_get("/history/{id}", self.get_history)
        app.router.add_get("/view", self.view)
        app.router.add_get("/experiment/models", self.experiment_models)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.worker = asyncio.ensure_future(self.work())

    def stop(self):
        if hasattr(self, "runner"):
            self.worker.cancel()
            self.call(self.runner.cleanup())
        super().stop()

    def notify(self):
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, condition):
        with self.changed:
            assert self.changed.wait_for(condition, timeout=WAIT), f"not within {WAIT} s: {self.requests}"

    def release(self):
        self.loop.call_soon_threadsafe(self.released.set)

    @web.middleware
    async def record(self, request, handler):
        self.requests.append(f"{request.method} {request.path}")
        try:
            if self.down:  # a restarting server cuts off one request, then it is back
                self.down = False
                request.transport.close()
                return web.Response()
            if self.garbage and request.path.startswith(self.garbage[0]):
                return web.Response(status=self.garbage[1], text=ERROR_PAGE, content_type="text/html")
            return await handler(request)
        finally:
            self.notify()

    async def restart(self):
        for ws in list(self.sockets.values()):
            await ws.close()
        self.queue, self.history, self.sockets = [], {}, {}
        self.down = True

    async def upload(self, request):
        form = await request.post()
        self.uploads[form["image"].filename] = form["image"].file.read()
        return web.json_response({"name": form["image"].filename, "subfolder": "", "type": "input"})

    async def prompt(self, request):
        body = await request.json()
        self.posts.append(body)
        if self.reject:
            return web.json_response(self.reject, status=400)
        pid = body.get("prompt_id")
        if pid in self.queue or pid in self.history:
            self.duplicates.append(pid)
        self.queue.append(pid)
        self.queued.append(pid)
        self.client_of = body["client_id"]
        self.prompts[pid] = body["prompt"]
        self.wake.set()
        if self.drop_prompt_responses:
            self.drop_prompt_responses -= 1
            request.transport.close()
        return web.json_response({"prompt_id": pid, "number": len(self.queued), "node_errors": {}})

    async def ws(self, request):
        if not self.websocket:
            return web.Response(status=404)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets[request.query["clientId"]] = ws
        await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
        async for _ in ws:
            pass
        return ws

    async def get_queue(self, request):
        self.queue_answers.append(list(self.queue))
        return web.json_response({"queue_running": [[0, p, {}, {}, []] for p in self.queue[:1]],
                                  "queue_pending": [[0, p, {}, {}, []] for p in self.queue[1:]]})

    async def get_history(self, request):
        pid = request.match_info["id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def experiment_models(self, request):
        if self.model_folders is None:
            return web.Response(status=404)
        return web.json_response(self.model_folders)

    async def view(self, request):
        key = (request.query["type"], request.query["subfolder"], request.query["filename"])
        return web.Response(body=self.files[key]) if key in self.files else web.Response(status=404)

    async def send(self, kind, data):
        ws = self.sockets.get(self.client_of)
        if ws is not None and not ws.closed:
            await ws.send_json({"type": kind, "data": data})

    async def work(self):
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                await self.execute(self.queue[0])
                self.notify()

    async def execute(self, pid):
        await self.send("execution_start", {"prompt_id": pid})
        if self.restarts_at_start:
            self.restarts_at_start -= 1
            await self.restart()
            return
        await self.send("executing", {"node": "8", "display_node": "8", "prompt_id": pid})
        await self.send("progress", {"value": 1, "max": 2, "prompt_id": pid, "node": "8"})
        if self.hold:
            await self.released.wait()
        await self.send("progress", {"value": 2, "max": 2, "prompt_id": pid, "node": "8"})
        image = self.prompts[pid]["4"]["inputs"]["image"]
        messages = [["execution_start", {"prompt_id": pid}]]
        outputs = {}
        if self.outcome == "error":
            error = {"prompt_id": pid, "node_id": "3", "node_type": "SUPIRLoader",
                     "exception_type": "SUPIRCheckpointError", "exception_message": "not a SUPIR file"}
            messages.append(["execution_error", error])
            await self.send("execution_error", error)
        elif self.outcome == "interrupted":
            stop = {"prompt_id": pid, "node_id": "8", "node_type": "SUPIRRestore"}
            messages.append(["execution_interrupted", stop])
            await self.send("execution_interrupted", stop)
        elif self.saved is not None:
            for nid, item in self.saved:
                outputs.setdefault(nid, {"images": []})["images"].append(item)
                if isinstance(item["filename"], str):
                    self.files[(item["type"], item["subfolder"], item["filename"])] = served(nid, item)
            messages.append(["execution_success", {"prompt_id": pid}])
        else:
            name = f"restored_{len(self.files) + 1:05}_.png"
            self.files[("output", "supir", name)] = b"restored " + self.uploads[image]
            self.files[("temp", "", "preview.png")] = b"preview"
            outputs = {"10": {"images": [{"filename": name, "subfolder": "supir", "type": "output"}]},
                       "11": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]}}
            messages.append(["execution_success", {"prompt_id": pid}])
            await self.send("execution_success", {"prompt_id": pid})
        self.queue.pop(0)
        self.history[pid] = {"prompt": [0, pid, {}, {}, []], "outputs": outputs, "status": {
            "status_str": "success" if self.outcome == "success" else "error",
            "completed": self.outcome == "success", "messages": messages}}
        await self.send("executing", {"node": None, "prompt_id": pid})


def served(nid: str, item: dict) -> bytes:
    """The bytes FakeComfy serves for a ``saved`` item."""
    return f"node {nid}: {item['subfolder']}/{item['filename']}".encode()


@pytest.fixture()
def fake():
    server = FakeComfy()
    yield server
    server.stop()


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("harbour", "portrait"):
        (folder / f"{name}.png").write_bytes(png(f"pixels of {name}"))
    return folder


def run(fake, *args, input_path=None, out=None):
    argv = ["supir_restore_basic", "--server", fake.url, "--retry-for", "30", "--poll-interval", "0.3", *args]
    if input_path is not None:
        argv += ["--input", str(input_path)]
    if out is not None:
        argv += ["--output", str(out)]
    return main(argv)


def test_a_batch_uploads_submits_follows_and_downloads(fake, photos, tmp_path, capsys):
    out = tmp_path / "out"
    # No status check comes from the clock within the test: the end of each job must come over the websocket.
    batch = Background(run, fake, "--seed", "7", "--poll-interval", "3600", input_path=photos, out=out)
    assert batch.result() == 0
    assert fake.requests.count("GET /queue") == 4, "one look-up before each submission, one at the job's end"
    assert sorted(os.listdir(out)) == ["harbour.png", "portrait.png"]
    assert (out / "harbour.png").read_bytes() == b"restored " + png("pixels of harbour")
    assert (out / "portrait.png").read_bytes() == b"restored " + png("pixels of portrait")
    assert [p["prompt"]["4"]["inputs"]["image"] for p in fake.posts] == ["harbour.png", "portrait.png"]
    assert all(p["prompt"]["8"]["inputs"]["seed"] == 7 for p in fake.posts)
    assert len({p["client_id"] for p in fake.posts}) == 1 and len({p["prompt_id"] for p in fake.posts}) == 2
    assert fake.duplicates == []
    printed = capsys.readouterr().out
    assert "[harbour] executing node 8 (SUPIRRestore)" in printed
    assert "[portrait] node 8 (SUPIRRestore): 2/2" in printed
    assert "2 of 2 job(s) succeeded" in printed


def test_previews_are_downloaded_on_request_from_a_server_given_without_scheme(fake, photos, tmp_path):
    out = tmp_path / "out"
    assert run(fake, "--previews", "--server", f"127.0.0.1:{fake.port}", input_path=photos / "harbour.png",
               out=out) == 0
    assert sorted(os.listdir(out)) == ["harbour_10_0.png", "harbour_11_0.png"]


def test_a_validation_error_reports_the_servers_message(fake, photos, tmp_path, capsys):
    fake.reject = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                             "details": ""},
                   "node_errors": {"2": {"errors": [{"message": "Value not in list",
                                                     "details": "ckpt_name: 'nope.safetensors' not in []"}],
                                         "class_type": "CheckpointLoaderSimple"}}}
    assert run(fake, "--checkpoint", "nope.safetensors", input_path=photos, out=tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "0 of 2 job(s) succeeded" in err
    assert ("FAILED harbour: the server rejected the workflow: Prompt outputs failed validation\n"
            "  node 2 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'nope.safetensors' not in []") in err
    assert "FAILED portrait" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("outcome, message", [
    ("error", "execution error in node 3 (SUPIRLoader): SUPIRCheckpointError: not a SUPIR file"),
    ("interrupted", "interrupted in node 8 (SUPIRRestore)")])
def test_execution_errors_and_interrupts_fail_the_job(fake, photos, tmp_path, capsys, outcome, message):
    fake.outcome = outcome
    assert run(fake, input_path=photos / "harbour.png", out=tmp_path / "out") == 1
    assert f"FAILED harbour: {message}" in capsys.readouterr().err


def test_a_lost_prompt_response_does_not_queue_the_job_twice(fake, photos, tmp_path):
    fake.drop_prompt_responses, fake.hold = 1, True
    batch = Background(run, fake, input_path=photos, out=tmp_path / "out")
    # The first job stays in node 8 until the client, not knowing whether its POST arrived, finds it queued.
    fake.wait_until(lambda: fake.posts and any(fake.posts[0]["prompt_id"] in seen for seen in fake.queue_answers))
    fake.release()
    assert batch.result() == 0
    assert len(fake.queued) == 2 and len(set(fake.queued)) == 2 and fake.duplicates == []
    assert sorted(os.listdir(tmp_path / "out")) == ["harbour.png", "portrait.png"]


def test_a_restarted_server_gets_the_lost_job_again_with_the_same_id(fake, photos, tmp_path, capsys):
    fake.restarts_at_start = 1
    assert run(fake, input_path=photos, out=tmp_path / "out") == 0
    first = fake.posts[0]["prompt_id"]
    assert fake.queued == [first, first, fake.posts[-1]["prompt_id"]] and fake.duplicates == []
    assert sorted(fake.history) == sorted({first, fake.posts[-1]["prompt_id"]})
    assert (tmp_path / "out" / "harbour.png").read_bytes() == b"restored " + png("pixels of harbour")
    assert (tmp_path / "out" / "portrait.png").read_bytes() == b"restored " + png("pixels of portrait")
    assert "does not know job" in capsys.readouterr().out


def test_a_job_lost_more_often_than_allowed_fails_and_the_batch_goes_on(fake, photos, tmp_path, capsys):
    fake.restarts_at_start = 2
    assert run(fake, "--max-resubmits", "1", input_path=photos, out=tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "FAILED harbour: the server lost the job 2 times" in err and "1 of 2 job(s) succeeded" in err
    assert os.listdir(tmp_path / "out") == ["portrait.png"]


def test_without_a_websocket_the_status_is_polled(fake, photos, tmp_path, capsys):
    fake.websocket = False
    assert run(fake, "--poll-interval", "0.05", input_path=photos / "portrait.png", out=tmp_path / "out") == 0
    assert "polling" in capsys.readouterr().out
    assert fake.duplicates == [] and len(fake.queued) == 1


def the_one_line(err: str, url: str) -> str:
    """What a run ended by its server printed on stderr: one line, naming the server."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: server {url} "), err
    return lines[0]


def test_an_unreachable_server_ends_the_batch_with_one_line(photos, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["supir_restore_basic", "--server", url, "--retry-for", "0", "--input", str(photos),
                        "--output", str(tmp_path / "out")])
    assert code == 1
    line = the_one_line(capsys.readouterr().err, url)
    assert f"{url} unreachable for 0 s (ClientConnectorError: " in line
    assert line.endswith("start ComfyUI there, check --server, or wait longer with --retry-for "
                         "(0 of 2 job(s) succeeded)")


def test_the_client_says_it_waits_for_an_unreachable_server_and_goes_on_when_it_comes(photos, tmp_path):
    fake = FakeComfy(listen=False)
    jobs = make_jobs(basic(), BASIC, [photos / "harbour.png"])
    printed = Printed()
    try:
        batch = Background(asyncio.run, run_batch(fake.url, jobs, tmp_path / "out", retry_for=600,
                                                         log=printed))
        printed.wait_for(rf"server {re.escape(fake.url)} unreachable \(ClientConnectorError\), retrying for another "
                         rf"\d+ s")
        fake.listen()
        batch.result()
    finally:
        fake.stop()
    assert jobs[0].error is None
    assert (tmp_path / "out" / "harbour.png").read_bytes() == b"restored " + png("pixels of harbour")


@pytest.mark.parametrize("path, status, request_line", [
    ("/upload/image", 200, "POST /upload/image"), ("/prompt", 200, "POST /prompt"), ("/queue", 200, "GET /queue"),
    ("/history/", 200, "GET /history/"), ("/queue", 502, "GET /queue")])
def test_a_server_that_answers_unlike_comfyui_ends_the_batch_with_one_line(fake, photos, tmp_path, capsys, path,
                                                                             status, request_line):
    fake.garbage = (path, status)
    assert run(fake, input_path=photos, out=tmp_path / "out") == 1
    line = the_one_line(capsys.readouterr().err, fake.url)
    answer = "something other than a JSON object" if status == 200 else f"HTTP {status}"
    assert re.search(rf'answered {request_line}\S* with {answer} \("<!DOCTYPE html> <html><head><title>502 ', line)
    assert line.endswith("check that --server is the address of a ComfyUI server (0 of 2 job(s) succeeded)")


@pytest.mark.parametrize("reply, with_input, problem", [
    (None, True, "did not answer POST /upload/image within 0.2 s: check that ComfyUI runs there and is not stuck, "
                 "or wait longer with --timeout"),
    (None, False, "did not answer GET /ws within 0.2 s"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", True,
     'answered POST /upload/image with something that is not HTTP ("Bad status line')])
def test_a_server_that_is_silent_or_not_http_ends_the_batch_with_one_line(photos, tmp_path, capsys, reply,
                                                                          with_input, problem):
    server = RawServer(reply)
    try:
        code = main(["supir_restore_basic", "--server", server.url, "--timeout", "0.2",
                            *(["--input", str(photos / "harbour.png")] if with_input else []),
                            "--output", str(tmp_path / "out")])
    finally:
        server.stop()
    assert code == 1
    assert problem in the_one_line(capsys.readouterr().err, server.url)
    assert server.connections == 1, "the client must not wait on a silent server again and again"


def test_a_non_image_input_is_refused_before_anything_is_uploaded(fake, photos, tmp_path, capsys):
    (photos / "notes.png").write_text("not an image")
    assert run(fake, input_path=photos, out=tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --input: not an image Pillow can read: {photos / 'notes.png'} "
                          f"(UnidentifiedImageError: ") and err.count("\n") == 1
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png("cut")[:40])
    assert run(fake, input_path=truncated, out=tmp_path / "out") == 2
    assert f"not an image Pillow can read: {truncated} (" in capsys.readouterr().err
    assert fake.requests == [] and fake.uploads == {}


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_that_is_a_file_is_refused_before_submitting(fake, photos, tmp_path, capsys, inside):
    mine = tmp_path / "restored.png"
    mine.write_bytes(b"the user's file")
    out = mine / "sub" if inside else mine
    assert run(fake, input_path=photos, out=out) == 2
    assert capsys.readouterr().err == (f"error: --output {out}: {mine} is a file, not a folder; give a folder for "
                                       f"the results\n")
    assert fake.requests == [] and mine.read_bytes() == b"the user's file"


def test_what_the_server_names_cannot_write_outside_the_output_folder(fake, photos, tmp_path):
    """Hostile node ids, subfolders and file names in the history entry: every file lands directly in --output,
    none overwrites another, and items whose fields are not text are left out instead of failing the job."""
    out = tmp_path / "a" / "b" / "out"
    for folder in ("harbour_x", ".harbour_x"):  # with these, "x/../../escaped" in a name leads out of the folder
        (out / folder).mkdir(parents=True)
    fake.saved = [(nid, {"filename": name, "subfolder": sub, "type": "output"}) for nid, name, sub in (
        ("out/a", "restored.png", ""), ("x/../../escaped", "../../escaped.png", "../.."), ("../..", "..", ".."),
        ("C:evil", "a.png", "/etc"), ("12:3", "b\\..\\c.png", ""), (".", ".hidden", "."), ("out_a", "d.png", ""),
        ("7", 5, ""))]
    before = {p for p in tmp_path.rglob("*")}
    assert run(fake, input_path=photos / "harbour.png", out=out) == 0
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p.parent == out and p.is_file() for p in written), sorted(map(str, written))
    assert sorted(p.name for p in written) == sorted([
        "harbour_out_a_0.png", "harbour_x_.._.._escaped_0.png", "harbour_.._.._0", "harbour_C_evil_0.png",
        "harbour_12_3_0.png", "harbour_._0", "harbour_out_a_0_2.png"])
    assert sorted(p.read_bytes() for p in written) == sorted(
        served(nid, item) for nid, item in fake.saved if isinstance(item["filename"], str))


def test_a_missing_model_says_which_folder_it_goes_in(fake, photos, tmp_path, capsys):
    fake.reject = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                             "details": ""},
                   "node_errors": {"3": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                                     "details": "supir_name: 'SUPIR-v0Q.ckpt' not in []",
                                                     "extra_info": {"input_name": "supir_name",
                                                                    "received_value": "SUPIR-v0Q.ckpt"}}],
                                         "class_type": "SUPIRLoader"}}}
    fake.model_folders = [{"name": "checkpoints", "folders": ["/srv/ComfyUI/models/checkpoints"]},
                          {"name": "supir", "folders": ["/srv/ComfyUI/models/supir", "/mnt/more/supir"]}]
    assert run(fake, input_path=photos / "harbour.png", out=tmp_path / "out") == 1
    assert ("  node 3 (SUPIRLoader): Value not in list: supir_name: 'SUPIR-v0Q.ckpt' not in []\n"
            "    SUPIR-v0Q.ckpt is not on the server: put it in ComfyUI's models/supir/ (on the server: "
            "/srv/ComfyUI/models/supir) and run again; where to get it: README.md, section \"Models\"") \
        in capsys.readouterr().err
    fake.model_folders = None  # a server without GET /experiment/models: the folder is still named
    assert run(fake, input_path=photos / "harbour.png", out=tmp_path / "out") == 1
    assert ("    SUPIR-v0Q.ckpt is not on the server: put it in ComfyUI's models/supir/ and run again; where to get "
            "it: README.md") in capsys.readouterr().err
