"""The command line of ``python -m workflows.client``: arguments, the closing report and the exit status."""
from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ServerError, WorkflowError
from .outputs import check_output_folder
from .run import make_jobs, run_batch
from .server import server_url
from .submission import Job
from .workflow import Overrides, apply_overrides, image_node, list_inputs, load_workflow, parse_set, \
    resolve_workflow_path, shipped_taking_input


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflows.client",
        description="Run an API-format ComfyUI workflow on a server, one job per input image, and download the "
                    "results. Exit status 0: all jobs succeeded; 1: a job failed or the server could not be used; "
                    "2: bad arguments or workflow.")
    parser.add_argument("workflow", help="API-format workflow JSON, or a shipped name such as supir_restore_basic")
    parser.add_argument("-s", "--server", default="http://127.0.0.1:8188", help="ComfyUI URL (%(default)s)")
    takes, takes_none = shipped_taking_input()
    parser.add_argument("-i", "--input", type=Path,
                        help="image file, or a folder of images (one job each); uploaded and set on the LoadImage. "
                             f"Shipped workflows that take it: {', '.join(takes)}; that take no input image: "
                             f"{', '.join(takes_none)}")
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


def check_numbers(args: argparse.Namespace) -> None:
    """Refuses numbers of seconds and counts that cannot work: negative, nan or infinite, or 0 where the client
    must wait for something."""
    seconds = [("--timeout", args.timeout, True), ("--poll-interval", args.poll_interval, True),
               ("--retry-for", args.retry_for, False)]
    for option, value, above_zero in seconds:
        if not math.isfinite(value) or value < 0 or (above_zero and value == 0):
            least = "above 0" if above_zero else "of 0 or more"
            raise WorkflowError(f"{option} {value:g}: give a number of seconds {least}")
    if args.max_resubmits < 0:
        raise WorkflowError(f"--max-resubmits {args.max_resubmits}: give a count of 0 or more")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = server_url(args.server)
        check_numbers(args)
        check_output_folder(args.output)
        path = resolve_workflow_path(args.workflow)
        workflow = apply_overrides(load_workflow(path), overrides_from_args(args))
        if args.input:
            image_node(workflow, args.image_node)
        inputs = list_inputs(args.input) if args.input else []
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
