"""Tier 2: the batch command (``python -m workflows.batch``) on a local Ray it starts itself, over two live ComfyUI
servers with tiny models, running the shipped basic restore cut to one sampler step (it uploads, samples and
saves). Each run is a subprocess, so Ray is always shut down with it. Which prompts ran is read from the servers'
``/history`` (new entries since the test began), which outputs exist from the output folder, and what happened to
each job from the manifest."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")
pytest.importorskip("ray", reason="the batch command needs Ray: pip install -r requirements-batch.txt")

from host_env import TORCHVISION_STUB, uses_torchvision_stub  # noqa: E402
from live_server import ComfyServer  # noqa: E402
from test_client_host import TINY, write_photos  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
FAST = [*TINY, "--set", "8.preset=Custom", "--set", "8.steps=1", "--set", "8.sampler=RestoreEDM"]
NAMES = [f"photo{i:02d}" for i in range(12)]


@pytest.fixture(scope="module")
def second_server(comfy_server, tmp_path_factory):
    """A second server on the session server's models and custom nodes, with folders of its own."""
    server = ComfyServer(COMFYUI_PATH, comfy_server.models_base, folders=str(tmp_path_factory.mktemp("second")))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def servers(comfy_server, second_server):
    return [comfy_server, second_server]


def batch_command(servers, *args: str) -> list[str]:
    return [sys.executable, "-m", "workflows.batch", "supir_restore_basic", "--servers",
            ",".join(s.url for s in servers), "--poll-interval", "0.5", *FAST, *args]


def run_batch(servers, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(batch_command(servers, *args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))


def history_ids(servers) -> list[set]:
    return [set(s.get("/history?max_items=100000")) for s in servers]


def new_prompts(servers, before: list[set]) -> dict[str, dict]:
    """Prompt id -> history entry of every prompt the servers ran since ``before``."""
    found = {}
    for server, old in zip(servers, before):
        found.update({pid: e for pid, e in server.get("/history?max_items=100000").items() if pid not in old})
    return found


def manifest(out) -> dict[str, dict]:
    """The last record of each job, keyed by the job's name."""
    with open(out / "batch_manifest.jsonl") as f:
        records = [json.loads(line) for line in f]
    return {r["name"]: r for r in records}


def submitted(stdout_err: str) -> int:
    return int(re.search(r"(\d+) submitted", stdout_err).group(1))


def test_twelve_images_give_twelve_outputs_once_and_a_rerun_submits_nothing(servers, tmp_path):
    photos = write_photos(tmp_path / "photos", NAMES, seed=1)
    out = tmp_path / "out"
    before = history_ids(servers)
    result = run_batch(servers, "--input", str(photos), "--output", str(out), "--seed", "11")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in NAMES] + ["batch_manifest.jsonl"])
    records = manifest(out)
    assert sorted(records) == NAMES and all(r["status"] == "done" and r["outputs"] == [f"{r['name']}.png"]
                                            for r in records.values())
    prompts = new_prompts(servers, before)
    assert len(prompts) == 12, "each job runs once"
    assert sorted(e["prompt"][2]["4"]["inputs"]["image"] for e in prompts.values()) == [f"{n}.png" for n in NAMES]
    assert all(e["status"]["status_str"] == "success" for e in prompts.values())
    assert {r["server"] for r in records.values()} == {s.url for s in servers}, "both servers take jobs"
    assert "12 done, 0 failed" in result.stdout and submitted(result.stdout) == 12

    stamps = {n: os.stat(out / f"{n}.png").st_mtime_ns for n in NAMES}
    before = history_ids(servers)
    again = run_batch(servers, "--input", str(photos), "--output", str(out), "--seed", "11")
    assert again.returncode == 0, again.stdout + again.stderr
    assert submitted(again.stdout) == 0 and "12 already done" in again.stdout
    assert new_prompts(servers, before) == {}
    assert {n: os.stat(out / f"{n}.png").st_mtime_ns for n in NAMES} == stamps, "no output is written twice"


def wait_for_a_running_job(server, process: subprocess.Popen) -> None:
    """Until ``server`` runs a job of the batch ``process`` (at most 5 minutes, while the batch runs)."""
    deadline = time.time() + 300
    while not server.get("/queue")["queue_running"]:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)


@pytest.fixture()
def killable_server(comfy_server, tmp_path):
    server = ComfyServer(COMFYUI_PATH, comfy_server.models_base, folders=str(tmp_path / "killable"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_a_server_killed_mid_batch_leaves_every_job_done_once(comfy_server, killable_server, tmp_path):
    photos = write_photos(tmp_path / "photos", NAMES, seed=2)
    out = tmp_path / "out"
    servers = [comfy_server, killable_server]
    before = history_ids([comfy_server])
    process = subprocess.Popen(batch_command(servers, "--input", str(photos), "--output", str(out),
                                             "--retry-for", "3", "--seed", "12"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_a_running_job(killable_server, process)
        killable_server.kill()
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stdout + stderr
    assert f"server {killable_server.url} taken out of the pool" in stderr
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in NAMES] + ["batch_manifest.jsonl"])
    records = manifest(out)
    assert all(r["status"] == "done" for r in records.values()) and sorted(records) == NAMES
    retried = [r for r in records.values() if r["attempts"] > 1]
    assert retried and all(r["server"] == comfy_server.url for r in retried), "the lost jobs ran on the live server"
    survivors = new_prompts([comfy_server], before)
    images = sorted(e["prompt"][2]["4"]["inputs"]["image"] for e in survivors.values())
    assert len(images) == len(set(images)), "no job ran twice on the live server"
    with open(out / "batch_manifest.jsonl") as f:
        assert len(f.readlines()) == 12, "one record per job: none written twice"


def test_a_corrupt_image_fails_alone_with_its_reason(servers, tmp_path):
    photos = write_photos(tmp_path / "photos", NAMES[:11], seed=3)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    out = tmp_path / "out"
    result = run_batch(servers, "--input", str(photos), "--output", str(out), "--seed", "13")
    assert result.returncode == 1, result.stdout + result.stderr
    records = manifest(out)
    assert sorted(n for n, r in records.items() if r["status"] == "done") == NAMES[:11]
    assert records["broken"]["status"] == "failed" and records["broken"]["outputs"] == []
    assert re.search(r"execution error in node 4 \(LoadImage\)", records["broken"]["error"]), records["broken"]
    assert "FAILED broken: execution error in node 4 (LoadImage)" in result.stderr
    assert "11 done, 1 failed" in result.stderr
    assert not (out / "broken.png").exists()


def test_a_manifests_captions_and_seeds_reach_their_jobs(servers, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour", "portrait", "street"], seed=4)
    rows = [("harbour.png", "a harbour at dusk", 101), ("portrait.png", "an old portrait", 202),
            ("street.png", "", 303)]
    table = photos / "list.csv"
    table.write_text("input,caption,seed,5.tile_size\n" + "".join(f"{i},{c},{s},0\n" for i, c, s in rows))
    out = tmp_path / "out"
    before = history_ids(servers)
    result = run_batch(servers, "--input", str(table), "--output", str(out), "--positive", "default caption")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = {e["prompt"][2]["4"]["inputs"]["image"]: e["prompt"][2] for e in new_prompts(servers, before).values()}
    assert sorted(ran) == ["harbour.png", "portrait.png", "street.png"]
    for image, caption, seed in rows:
        assert ran[image]["8"]["inputs"]["seed"] == seed
        assert ran[image]["7"]["inputs"]["caption"] == (caption or "default caption")
    assert sorted(os.listdir(out)) == ["batch_manifest.jsonl", "harbour.png", "portrait.png", "street.png"]


def test_the_quality_gate_reruns_a_job_scored_below_the_threshold(servers, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"], seed=5)
    out = tmp_path / "out"
    before = history_ids(servers)
    # PSNR against the input is finite, so a threshold of 1000 dB is never met: every try runs
    result = run_batch(servers, "--input", str(photos), "--output", str(out), "--seed", "40",
                       "--retry-below", "psnr_y=1000", "--gate-tries", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    prompts = new_prompts(servers, before)
    assert sorted(e["prompt"][2]["8"]["inputs"]["seed"] for e in prompts.values()) == [40, 41, 42]
    assert all(e["prompt"][2]["supir_batch_gate"]["class_type"] == "SUPIRImageMetrics" for e in prompts.values())
    record = manifest(out)["harbour"]
    assert [s["seed"] for s in record["scores"]] == [40, 41, 42]
    assert all(0 < s["psnr_y"] < 1000 for s in record["scores"])
    assert os.listdir(out / ".") and (out / "harbour.png").is_file()

    out2 = tmp_path / "out2"
    passed = run_batch(servers, "--input", str(photos), "--output", str(out2), "--seed", "40",
                       "--retry-below", "psnr_y=0", "--gate-tries", "3")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert [s["seed"] for s in manifest(out2)["harbour"]["scores"]] == [40], "a score above the threshold stops"


def test_a_foreign_file_in_the_output_folder_is_refused_before_work(servers, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"], seed=6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "harbour.png").write_bytes(b"the user's own file")
    before = history_ids(servers)
    result = run_batch(servers, "--input", str(photos), "--output", str(out), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--output {out} holds files this batch did not write (harbour.png)" in result.stderr
    assert (out / "harbour.png").read_bytes() == b"the user's own file"
    assert new_prompts(servers, before) == {}
    assert sorted(os.listdir(out)) == ["harbour.png"]


def comfyui_pid(port: int) -> int:
    """The process serving ``port`` (a ComfyUI the batch launched)."""
    import psutil
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return connection.pid
    raise AssertionError(f"nothing listens on port {port}")


def test_a_launched_server_that_dies_is_restarted_and_its_job_done_once(comfy_server, tmp_path):
    photos = write_photos(tmp_path / "photos", NAMES[:4], seed=7)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if uses_torchvision_stub():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TORCHVISION_STUB, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "workflows.batch", "supir_restore_basic", "--launch", COMFYUI_PATH,
               "--cpu-servers", "1", "--comfy-args", f"--base-directory {comfy_server.models_base}",
               "--poll-interval", "0.5", "--retry-for", "300", *FAST, "--seed", "14", "--input", str(photos),
               "--output", str(out)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        line = process.stderr.readline()
        while not line.startswith("1 server(s): "):
            assert line, process.communicate()
            line = process.stderr.readline()
        url = line.split()[-1]
        launched = ComfyServer.__new__(ComfyServer)
        launched.url = url
        wait_for_a_running_job(launched, process)
        os.kill(comfyui_pid(int(url.rpartition(":")[2])), 9)
        stdout, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stdout + stderr
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in NAMES[:4]] + ["batch_manifest.jsonl"])
    records = manifest(out)
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records.values()), records
    assert f"ComfyUI at {url} exited with -9: restarting it" in stderr
    assert len(re.findall(r"the server does not know job", stderr)) == 1, "the lost job is submitted again, once"
