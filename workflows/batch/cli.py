"""``python -m workflows.batch``: the client's options plus where the servers and Ray come from. The driver
streams the inputs, skips the jobs the manifest has as done, keeps at most two jobs per server actor (one
running, one waiting in the actor's queue: ``ray.wait`` is the back-pressure), writes each job's outputs and its
manifest record as its result arrives, and takes out of the pool a server that is gone or fails every job."""
from __future__ import annotations

import argparse
import collections
import shlex
import sys
import time
from pathlib import Path

from ..headless.cli import build_parser as client_parser, check_numbers, overrides_from_args
from ..headless.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, WorkflowError
from ..headless.outputs import check_output_folder
from ..headless.server import one_line, server_url
from ..headless.workflow import apply_overrides, image_node, load_workflow, resolve_workflow_path
from .jobs import Manifest, input_items, job_id, job_workflow, write_outputs
from .worker import ServerWorker, parse_gate

INSTALL = "pip install -r requirements-batch.txt"
IN_FLIGHT_PER_SERVER = 2  # one running on the server, one waiting in the actor's queue
SERVER_START_TIMEOUT = 900.0  # seconds for Ray to place the actors and for launched servers to serve
FAILURE_STREAK = 3  # a server's first jobs all failed while another server succeeds: it is taken out


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"error: the batch command needs Ray, which is not installed ({e}); install it with: "
                         f"{INSTALL}") from None
    return ray


def build_parser() -> argparse.ArgumentParser:
    parser = client_parser()
    parser.prog = "python -m workflows.batch"
    parser.description = ("Run an API-format workflow on many ComfyUI servers through Ray, one job per input "
                          "image, exactly once and resumably (a manifest beside the outputs). Exit status 0: all "
                          "jobs succeeded; 1: a job failed or no server could be used; 2: bad arguments; 130: "
                          "stopped (run the same command again to resume).")
    for action in parser._actions:
        if action.dest == "server":
            action.help = argparse.SUPPRESS
        if action.dest == "input":
            action.help = ("folder of images (one job each), an image, or a manifest (.csv with a header, .jsonl): "
                           "column input (path relative to the manifest), optional output and per-row overrides "
                           "caption, seed, scale, negative, checkpoint, supir_model, set, NODE_ID.input")
    servers = parser.add_argument_group("servers and Ray")
    servers.add_argument("--servers", help="running ComfyUI servers, URL[,URL...] (one Ray actor each)")
    servers.add_argument("--launch", metavar="COMFYUI_PATH",
                         help="start and own ComfyUI processes from this folder (with --cpu-servers or --per-gpu)")
    servers.add_argument("--cpu-servers", type=int, default=0, help="with --launch: this many CPU-only servers")
    servers.add_argument("--per-gpu", action="store_true",
                         help="with --launch: one server per GPU of the Ray cluster (each actor holds one GPU)")
    servers.add_argument("--comfy-args", default="", help="extra ComfyUI arguments for --launch, one string")
    servers.add_argument("--ray-address", help="an existing Ray cluster (auto, ray://HOST:10001); default: a "
                                               "local Ray started here")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--recursive", action="store_true", help="also the images of sub-folders (mirrored)")
    batch.add_argument("--max-attempts", type=int, default=3,
                       help="times a job is tried on servers that went away or hung (%(default)s)")
    batch.add_argument("--job-timeout", type=float, default=3600.0,
                       help="seconds a job may take on a server before it counts as hung (%(default)s)")
    batch.add_argument("--retry-below", metavar="METRIC=VALUE",
                       help="quality gate: re-run with the next seed while the score is below VALUE (clipiqa, "
                            "musiq, maniqa; or psnr_y, ssim_y, psnr_rgb, ssim_rgb against the input)")
    batch.add_argument("--gate-tries", type=int, default=3, help="runs per job at most under --retry-below "
                                                                 "(%(default)s); the best is kept")
    return parser


class Pool:
    """The server actors and what the driver knows of each."""

    def __init__(self, actors: list, urls: list[str]):
        self.actors, self.urls = actors, urls
        self.alive = [True] * len(actors)
        self.in_flight = [0] * len(actors)
        self.done = [0] * len(actors)
        self.streak: list[list[dict]] = [[] for _ in actors]  # jobs failed since the last one done

    def free(self) -> int | None:
        open_ = [i for i, up in enumerate(self.alive) if up and self.in_flight[i] < IN_FLIGHT_PER_SERVER]
        return min(open_, key=lambda i: self.in_flight[i]) if open_ else None

    def remove(self, i: int, why: str) -> None:
        if self.alive[i]:
            self.alive[i] = False
            print(f"server {self.urls[i]} taken out of the pool: {why}", file=sys.stderr, flush=True)

    def counts(self) -> str:
        return ", ".join(f"{u}: {d}" + ("" if up else " (out)") for u, d, up in zip(self.urls, self.done, self.alive))


def make_actors(ray, args) -> tuple[list, list[str]]:
    options = {"retry_for": args.retry_for, "timeout": args.timeout, "poll_interval": args.poll_interval,
               "max_resubmits": args.max_resubmits}
    # Ray restarts an actor whose process died and re-runs its task (same prompt id: found on the server)
    Remote = ray.remote(max_restarts=3, max_task_retries=2)(ServerWorker)
    actors = []
    for url in filter(None, (args.servers or "").split(",")):
        actors.append(Remote.options(num_cpus=0).remote(url=server_url(url.strip()), options=options))
    if args.launch:
        comfy_args = tuple(shlex.split(args.comfy_args))
        if args.per_gpu:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if not gpus:
                raise WorkflowError("--per-gpu: the Ray cluster has no GPU")
            actors += [Remote.options(num_gpus=1).remote(launch=args.launch, comfy_args=comfy_args, options=options)
                       for _ in range(gpus)]
        actors += [Remote.options(num_cpus=1).remote(launch=args.launch, comfy_args=comfy_args, cpu=True,
                                                     options=options) for _ in range(args.cpu_servers)]
    urls = ray.get([a.address.remote() for a in actors], timeout=SERVER_START_TIMEOUT)
    return actors, urls


def check_args(args) -> None:
    if not args.input:
        raise WorkflowError("--input is needed: a folder of images, an image or a manifest (.csv, .jsonl)")
    if not args.servers and not args.launch:
        raise WorkflowError("no servers: give --servers URL[,URL...] and/or --launch COMFYUI_PATH with "
                            "--cpu-servers N or --per-gpu")
    if args.launch and not (args.cpu_servers or args.per_gpu):
        raise WorkflowError("--launch needs --cpu-servers N or --per-gpu")
    if args.launch and not (Path(args.launch) / "main.py").is_file():
        raise WorkflowError(f"--launch {args.launch}: no ComfyUI main.py there")
    for url in filter(None, (args.servers or "").split(",")):
        server_url(url.strip())
    check_numbers(args)
    check_output_folder(args.output)
    if not args.job_timeout > 0 or args.max_attempts < 1:
        raise WorkflowError("--job-timeout must be a number of seconds above 0, --max-attempts at least 1")


class Batch:
    """The driver's loop over the streamed jobs."""

    def __init__(self, args, workflow: dict, manifest: Manifest, gate, log):
        self.args, self.workflow, self.manifest, self.gate, self.log = args, workflow, manifest, gate, log
        self.items = input_items(args.input, args.recursive)
        self.retry: collections.deque = collections.deque()
        self.names: set[str] = set()
        self.in_flight: dict = {}  # ref -> (spec, server index)
        self.done = self.failed = self.skipped = self.submitted = 0
        self.failures: dict[str, str] = {}  # job id (or input) -> its line in the summary
        self.fatal: list[str] = []
        self.started = time.monotonic()
        self.last_progress = 0.0

    def next_spec(self) -> dict | None:
        """The next job to run: one to try again, else the next input not done yet (None when none is left)."""
        if self.retry:
            return self.retry.popleft()
        for item in self.items:
            try:
                workflow = job_workflow(self.workflow, item)
                if not item.image.is_file():
                    raise WorkflowError(f"{item.where}: no such image file")
                content = item.image.read_bytes()
            except WorkflowError as e:
                self.fail_item(item.name, str(item.image), "", str(e), 0)
                continue
            jid = job_id(content, workflow)
            if self.manifest.done(jid):
                self.skipped += 1
                continue
            if item.name in self.names:
                self.fail_item(item.name, str(item.image), jid,
                               f"its output name {item.name!r} is another input's too; rename one, or give an "
                               f"output column", self.manifest.attempts(jid))
                continue
            self.names.add(item.name)
            return {"job": jid, "name": item.name, "input": str(item.image), "input_name": item.image.name,
                    "input_bytes": content, "workflow": workflow, "image_node": self.args.image_node,
                    "gate": self.gate, "job_timeout": self.args.job_timeout,
                    "attempt": self.manifest.attempts(jid) + 1}
        return None

    def fail_item(self, name: str, image: str, jid: str, error: str, attempts: int) -> None:
        self.failed += 1
        self.failures[jid or image] = f"FAILED {name}: {error}"
        if jid:
            self.manifest.append({"job": jid, "input": image, "name": name, "outputs": [], "server": None,
                                  "attempts": attempts, "seconds": 0, "status": "failed", "error": error})
        else:
            print(f"FAILED {name}: {error}", file=sys.stderr, flush=True)

    def record(self, spec: dict, result: dict, status: str, outputs: list[str], error: str | None) -> None:
        self.manifest.append({"job": spec["job"], "input": spec["input"], "name": spec["name"], "outputs": outputs,
                              "server": result.get("server"), "attempts": spec["attempt"],
                              "seconds": result.get("seconds"), "status": status, "error": error,
                              **({"scores": result["scores"]} if result.get("scores") else {})})

    def handle(self, pool: Pool, spec: dict, i: int, result: dict) -> None:
        for note in result.get("notes", []):
            self.log(note)
        status = result["status"]
        if status == "done":
            try:
                outputs = write_outputs(self.manifest.out_dir, spec["name"], result["outputs"], self.manifest.owned)
            except OSError as e:
                status, result = "failed", dict(result, error=f"writing the outputs: {e}")
            else:
                self.record(spec, result, "done", outputs, None)
                self.done += 1
                pool.done[i] += 1
                pool.streak[i] = []
                return
        if status == "server":
            pool.remove(i, result["error"])
            self.try_again([spec], result["error"])
            return
        self.record(spec, result, "failed", [], result["error"])
        self.failed += 1
        self.failures[spec["job"]] = f"FAILED {spec['name']}: {result['error']}"
        pool.streak[i].append(spec)
        others_work = any(d for j, d in enumerate(pool.done) if j != i and pool.alive[j])
        if len(pool.streak[i]) >= FAILURE_STREAK and not pool.done[i] and others_work:
            pool.remove(i, f"its first {len(pool.streak[i])} jobs failed while other servers succeed; the last: "
                           f"{result['error']}")
            self.failed -= len(pool.streak[i])
            for failed in pool.streak[i]:
                del self.failures[failed["job"]]
            self.try_again(pool.streak[i], result["error"])

    def try_again(self, specs: list[dict], error: str) -> None:
        """Jobs of a server taken out of the pool go to the others, up to --max-attempts in all."""
        for spec in specs:
            if spec["attempt"] < self.args.max_attempts:
                self.retry.append(dict(spec, attempt=spec["attempt"] + 1))
            else:
                self.record(spec, {}, "failed", [], f"{error} (tried {spec['attempt']} times)")
                self.failed += 1
                self.failures[spec["job"]] = f"FAILED {spec['name']}: {error} (tried {spec['attempt']} times)"

    def progress(self, pool: Pool, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last_progress < 2.0:
            return
        self.last_progress = now
        minutes = max(now - self.started, 1e-6) / 60
        rate = self.done / minutes
        total = self.args.total
        remaining = total - self.done - self.failed - self.skipped
        eta = f", ETA {remaining / rate:.1f} min" if rate else ""
        self.log(f"done {self.done}, failed {self.failed}, skipped {self.skipped}, remaining {remaining}, "
                 f"{rate:.1f} img/min{eta} | {pool.counts()}")

    def run(self, ray, pool: Pool) -> None:
        while True:
            while (i := pool.free()) is not None:
                spec = self.next_spec()
                if spec is None:
                    break
                self.in_flight[pool.actors[i].run.remote(spec)] = (spec, i)
                pool.in_flight[i] += 1
                self.submitted += 1
            if not self.in_flight:
                if not any(pool.alive):
                    self.fatal.append("error: no server left in the pool; run the same command again to resume "
                                      "once the servers work")
                break
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=2.0)
            for ref in ready:
                spec, i = self.in_flight.pop(ref)
                pool.in_flight[i] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    result = {"status": "server", "error": f"its actor died ({type(e).__name__})"}
                except ray.exceptions.RayTaskError as e:
                    result = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[-1]}"}
                self.handle(pool, spec, i, result)
            self.progress(pool)
        self.progress(pool, final=True)


def start_ray(ray, address: str | None) -> None:
    if address:  # the cluster's nodes get this command's code from the driver, not from their disks
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])]})
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def count_inputs(args) -> int:
    """The number of inputs, for the progress line; a pass over the names and rows (not the images) that also
    finds a bad manifest row before any work."""
    return sum(1 for _ in input_items(args.input, args.recursive))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        gate = parse_gate(args.retry_below, args.gate_tries) if args.retry_below else None
        workflow = apply_overrides(load_workflow(resolve_workflow_path(args.workflow)), overrides_from_args(args))
        image_node(workflow, args.image_node)
        manifest = Manifest(args.output)
        foreign = manifest.foreign_files()
        if foreign:
            raise WorkflowError(f"--output {args.output} holds files this batch did not write "
                                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); they would "
                                f"never be overwritten, but choose an empty or this batch's own folder")
        args.total = count_inputs(args)
    except (WorkflowError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    ray = import_ray()

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    pool = None
    batch = Batch(args, workflow, manifest, gate, log)
    try:
        first = batch.next_spec()  # jobs already done are skipped before Ray starts: a finished batch needs none
        if first is not None:
            batch.retry.append(first)
            start_ray(ray, args.ray_address)
            actors, urls = make_actors(ray, args)
            pool = Pool(actors, urls)
            log(f"{len(actors)} server(s): {', '.join(urls)}")
            batch.run(ray, pool)
    except WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"stopped: {batch.done} done, {batch.failed} failed; jobs still running on a server may finish "
              f"there; run the same command again to resume", file=sys.stderr, flush=True)
        pool = None  # its actors end with Ray (a launched ComfyUI with its actor's process)
        return EXIT_INTERRUPTED
    except ray.exceptions.RayError as e:  # an actor could not start its server, or no node could hold it
        print(f"error: the servers could not be started: {one_line(str(e), 2000)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if pool is not None:
            for actor in pool.actors:
                try:
                    ray.get(actor.stop.remote(), timeout=30)
                except Exception:  # noqa: BLE001 - a dead actor has nothing left to stop
                    pass
        if ray.is_initialized():
            ray.shutdown()
    lines = [f"{batch.done} done, {batch.failed} failed, {batch.skipped} already done (skipped), "
             f"{batch.submitted} submitted" + (f"; per server: {pool.counts()}" if pool else ""),
             *batch.failures.values(), *batch.fatal]
    code = EXIT_FAILED if batch.failures or batch.fatal else EXIT_OK
    print("\n".join(lines), file=sys.stderr if code else sys.stdout, flush=True)
    return code
