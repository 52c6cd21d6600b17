"""Tier 1: the batch command's jobs without Ray or a server (workflows/batch/jobs.py): inputs from a folder tree
and from CSV/JSONL manifests with per-row overrides, stable job ids, and the manifest that makes a batch resumable
and never overwrites a file it did not write."""
import json

import pytest

pytest.importorskip("aiohttp", reason="the headless client needs aiohttp (ComfyUI's own dependency)")

from supir_restore.workflows.batch.jobs import (MANIFEST_NAME, Manifest, input_items, job_id,  # noqa: E402
                                                job_workflow, write_outputs)
from supir_restore.workflows.headless.errors import WorkflowError  # noqa: E402
from supir_restore.workflows.headless.workflow import SHIPPED, load_workflow  # noqa: E402

BASIC = load_workflow(SHIPPED / "supir_restore_basic.json")


def test_a_folder_is_walked_in_name_order_and_its_tree_mirrored(tmp_path):
    for rel in ("b.png", "a.jpg", "notes.txt", "sub/c.webp", "sub/deeper/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [i.name for i in input_items(tmp_path)] == ["a", "b"]
    assert [i.name for i in input_items(tmp_path, recursive=True)] == ["a", "b", "sub/c", "sub/deeper/d"]


def test_manifest_rows_carry_their_overrides_to_their_jobs(tmp_path):
    (tmp_path / "list.csv").write_text("input,caption,seed,8.steps,output\n"
                                       "one.png,a harbour,7,12,\n"
                                       "two.png,,,,renamed/two\n")
    one, two = input_items(tmp_path / "list.csv")
    assert (one.image, one.name, two.name) == (tmp_path / "one.png", "one", "renamed/two")
    graph = job_workflow(BASIC, one)
    assert graph["7"]["inputs"]["caption"] == "a harbour" and graph["8"]["inputs"]["seed"] == 7
    assert graph["8"]["inputs"]["steps"] == 12 and BASIC["8"]["inputs"]["steps"] == 50
    assert job_workflow(BASIC, two) is BASIC
    (tmp_path / "list.jsonl").write_text(json.dumps({"input": "one.png", "scale": 2, "set": ["8.steps=3"]}) + "\n")
    (row,) = input_items(tmp_path / "list.jsonl")
    assert (row.overrides.scale, row.overrides.sets) == (2.0, [("8", "steps", 3)])


@pytest.mark.parametrize("text, message", [
    ("input,colour\na.png,red\n", "unknown column(s) colour"),
    ("caption\nhello\n", "no 'input' column"),
    ("input,seed\na.png,many\n", "column seed"),
    ("input,output\na.png,../outside\n", "must be a relative name inside --output"),
])
def test_bad_manifest_rows_are_named(tmp_path, text, message):
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(WorkflowError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(input_items(tmp_path / "list.csv"))


def test_a_job_id_follows_the_input_bytes_and_the_workflow_after_overrides():
    same = job_id(b"pixels", BASIC)
    assert job_id(b"pixels", json.loads(json.dumps(BASIC))) == same
    changed = json.loads(json.dumps(BASIC))
    changed["8"]["inputs"]["seed"] = 1
    assert len({same, job_id(b"pixels!", BASIC), job_id(b"pixels", changed)}) == 3


def test_the_manifest_resumes_and_guards_the_files_it_did_not_write(tmp_path):
    manifest = Manifest(tmp_path)
    outputs = write_outputs(tmp_path, "sub/a", [("a.png", b"restored")], manifest.owned)
    manifest.append({"job": "j1", "name": "sub/a", "outputs": outputs, "status": "done", "attempts": 1})
    manifest.append({"job": "j2", "name": "b", "outputs": [], "status": "failed", "attempts": 2})
    with open(tmp_path / MANIFEST_NAME, "a") as f:
        f.write('{"job": "j3", "status": "do')  # a record torn by a crash
    (tmp_path / "user.png").write_bytes(b"the user's")
    again = Manifest(tmp_path)
    assert outputs == ["sub/a.png"] and again.done("j1") and not again.done("j2") and not again.done("j3")
    assert again.attempts("j2") == 2 and again.foreign_files() == ["user.png"]
    with pytest.raises(FileExistsError, match="was not written by this batch"):
        write_outputs(tmp_path, "user", [("user.png", b"new")], again.owned)
    assert (tmp_path / "user.png").read_bytes() == b"the user's"
    (tmp_path / "sub/a.png").unlink()
    assert not Manifest(tmp_path).done("j1"), "a done job whose output is gone runs again"


def test_a_server_whose_first_jobs_all_fail_hands_them_to_the_others(tmp_path):
    """The driver's bookkeeping (workflows/batch/cli.py) on results as the server actors return them."""
    import argparse

    from supir_restore.workflows.batch.cli import Batch, Pool
    args = argparse.Namespace(input=tmp_path, recursive=False, max_attempts=2, image_node=None, job_timeout=60.0,
                              total=5)
    batch = Batch(args, BASIC, Manifest(tmp_path / "out"), None, lambda line: None)
    pool = Pool(["good", "bad"], ["http://good", "http://bad"])

    def spec(n: int) -> dict:
        return {"job": f"j{n}", "name": f"img{n}", "input": f"img{n}.png", "attempt": 1}

    batch.handle(pool, spec(0), 0, {"status": "done", "outputs": [("img0.png", b"x")], "server": "http://good"})
    for n in (1, 2):
        batch.handle(pool, spec(n), 1, {"status": "failed", "error": "node 2: model missing", "server": "http://bad"})
    assert pool.alive == [True, True] and batch.failed == 2
    batch.handle(pool, spec(3), 1, {"status": "failed", "error": "node 2: model missing", "server": "http://bad"})
    assert pool.alive == [True, False] and batch.failed == 0 and batch.failures == {}
    assert [(s["job"], s["attempt"]) for s in batch.retry] == [("j1", 2), ("j2", 2), ("j3", 2)]
    assert pool.free() == 0, "only the good server takes jobs"
    # a server that goes away: its job is tried elsewhere until --max-attempts, then recorded as failed
    batch.handle(pool, dict(spec(4), attempt=2), 0, {"status": "server", "error": "unreachable", "server": "x"})
    assert batch.failures == {"j4": "FAILED img4: unreachable (tried 2 times)"}
    records = [json.loads(line) for line in (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()]
    assert [(r["job"], r["status"]) for r in records] == [("j0", "done"), ("j1", "failed"), ("j2", "failed"),
                                                          ("j3", "failed"), ("j4", "failed")]
