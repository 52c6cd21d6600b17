"""A batch: one job per input image, each uploaded, run and downloaded in turn on one server connection."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from .errors import JobFailed
from .outputs import download_outputs
from .server import Client, open_client, upload_image
from .submission import Job, failure_message, wait_for_result
from .workflow import image_node


def make_jobs(workflow: dict, workflow_path: Path, inputs: list[Path]) -> list[Job]:
    """One job per input image (outputs named after it), or one job named after the workflow without inputs."""
    if not inputs:
        return [Job(workflow_path.stem, workflow)]
    return [Job(path.stem, workflow, image=path) for path in inputs]


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
    async with open_client(url, retry_for=retry_for, timeout=timeout, poll_interval=poll_interval,
                           max_resubmits=max_resubmits, log=log) as client:
        for job in jobs:
            try:
                await run_job(client, job, out_dir, image_node_id, previews)
            except JobFailed as e:
                job.error = str(e)
    return jobs
