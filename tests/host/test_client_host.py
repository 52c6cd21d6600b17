"""Tier 2: the headless client (workflows/client.py, run as ``python -m workflows.client``) against real ComfyUI
servers with tiny models: a shipped API workflow end to end, the server's validation error and the folders of the
missing model files, an execution error, an interrupt, and a server killed and restarted in the middle of a batch
(its own server, on the same port and folders, so the session server is untouched); and the client's table of
loader inputs and model folders against the nodes' own file lists."""
import asyncio
import os
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("comfy", reason="tier 2 (host) tests need ComfyUI: set COMFYUI_PATH to a ComfyUI checkout")
pytest.importorskip("aiohttp", reason="the headless client needs aiohttp")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from live_server import ComfyServer  # noqa: E402

from supir_restore.workflows.headless.models import model_folder  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
TINY = ["--checkpoint", "tiny_sdxl.safetensors", "--supir-model", "tiny_supir_fp16.safetensors"]


def fast(steps: int, seed: int) -> list[str]:
    """A shipped workflow cut to a few RestoreEDM steps (Custom preset); a new seed keeps the sampler uncached."""
    return [*TINY, "--seed", str(seed), "--set", "8.preset=Custom", "--set", f"8.steps={steps}",
            "--set", "8.sampler=RestoreEDM"]


def client_command(server_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "workflows.client", "supir_restore_basic", "--server", server_url,
            "--poll-interval", "1", *args]


def run_client(server_url: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(client_command(server_url, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def write_photos(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def submitted_ids(stdout: str) -> dict[str, list[str]]:
    """Job name -> the prompt ids the client printed when submitting."""
    ids: dict[str, list[str]] = {}
    for name, pid in re.findall(r"^\[(\w+)\] submitting as (\S+)$", stdout, re.M):
        ids.setdefault(name, []).append(pid)
    return ids


def wait_for_line(process: subprocess.Popen, pattern: str, timeout: float, seen: list[str]) -> None:
    """Reads the client's stdout (into ``seen``) until a line matches ``pattern``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the client ended before {pattern!r}:\n{''.join(seen)}")
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{''.join(seen)}")


def test_a_shipped_workflow_runs_and_its_result_is_downloaded(comfy_server, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"])
    result = run_client(comfy_server.url, *fast(2, seed=101), "--input", str(photos), "--output",
                        str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.listdir(tmp_path / "out") == ["harbour.png"]
    with Image.open(tmp_path / "out" / "harbour.png") as restored:
        assert restored.size == (64, 48)
    assert "[harbour] executing node 8 (SUPIRRestore)" in result.stdout
    assert "[harbour] node 8 (SUPIRRestore): 2/2" in result.stdout
    (pid,) = submitted_ids(result.stdout)["harbour"]
    entry = comfy_server.get(f"/history/{pid}")[pid]
    assert entry["status"]["status_str"] == "success"
    uploaded = entry["prompt"][2]["4"]["inputs"]["image"]  # ComfyUI renames an upload whose name another test used
    assert re.fullmatch(r"harbour( \(\d+\))?\.png", uploaded), uploaded
    assert entry["prompt"][2]["8"]["inputs"]["seed"] == 101
    assert os.path.exists(os.path.join(comfy_server.base, "input", uploaded))


def test_a_validation_error_reports_the_servers_message_and_where_missing_models_go(comfy_server, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"])
    result = run_client(comfy_server.url, *TINY, "--checkpoint", "missing_model.safetensors", "--supir-model",
                        "SUPIR-v0Q.ckpt", "--input", str(photos), "--output", str(tmp_path / "out"), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED harbour: the server rejected the workflow: Prompt outputs failed validation" in result.stderr
    assert re.search(r"node 2 \(CheckpointLoaderSimple\): Value not in list: ckpt_name: 'missing_model.safetensors' "
                     r"not in \[.*'tiny_sdxl.safetensors'", result.stderr), result.stderr
    models = os.path.join(comfy_server.models_base, "models")
    for file, folder in (("missing_model.safetensors", "checkpoints"), ("SUPIR-v0Q.ckpt", "supir")):
        assert (f"    {file} is not on the server: put it in ComfyUI's models/{folder}/ (on the server: "
                f"{os.path.join(models, folder)}) and run again; where to get it: README.md, section \"Models\"\n"
                ) in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


CORE_LOADERS = ("CheckpointLoaderSimple", "LoraLoader", "LoraLoaderModelOnly", "VAELoader", "UNETLoader")


def combo_options(spec) -> list | None:
    """The options of a combo input as /object_info gives them (a list, or "COMBO" with options), else None."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" and len(spec) > 1 else None


def test_the_clients_model_folders_are_those_the_loaders_list(monkeypatch, tmp_path):
    """Every folder's file list becomes one name that says the folder ("supir@file"), so each combo of this pack's
    nodes and of the core loaders shows the folder its files come from; the client's table must name the same
    folder (the first listed, where the node lists several) for each, and none for the other combos."""
    import folder_paths
    import nodes

    from supir_restore.nodes import comfy_entrypoint, supir_nodes
    monkeypatch.setattr(folder_paths, "get_filename_list", lambda folder: [f"{folder}@file"])
    monkeypatch.setattr(supir_nodes, "looks_like_supir", lambda path: True)
    (tmp_path / "vlm@model").mkdir()
    (tmp_path / "vlm@model" / "config.json").write_text("{}")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "vlm", ([str(tmp_path)], set()))
    infos = [cls.GET_NODE_INFO_V1() for cls in asyncio.run(asyncio.run(comfy_entrypoint()).get_node_list())]
    infos += [{"name": name, "input": nodes.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()} for name in CORE_LOADERS]
    derived, table, files = {}, {}, 0
    for info in infos:
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                options = combo_options(spec)
                if options is None:
                    continue
                # a node may prefix its options with their folder group, e.g. "supir/" + "supir@file"
                folders = [o.partition("@")[0].rpartition("/")[2] for o in options if isinstance(o, str) and "@" in o]
                derived[info["name"], name] = folders[0] if folders else None
                table[info["name"], name] = model_folder(info["name"], name)
                files += bool(folders)
    assert files >= 20, "the file inputs were not found: the derivation does not see the loaders' lists"
    assert table == derived


def test_an_execution_error_names_the_node_and_the_exception(comfy_server, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"])
    result = run_client(comfy_server.url, *fast(2, seed=102), "--supir-model", "corrupt.safetensors",
                        "--input", str(photos), "--output", str(tmp_path / "out"), timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"FAILED harbour: execution error in node 3 \(SUPIRLoader\): CorruptWeightsError: "
                     r".*corrupt\.safetensors: cannot be read", result.stderr), result.stderr


def test_an_interrupt_is_reported_and_fails_the_job(comfy_server, tmp_path):
    photos = write_photos(tmp_path / "photos", ["harbour"])
    process = subprocess.Popen(client_command(comfy_server.url, *fast(200, seed=103), "--input", str(photos),
                                              "--output", str(tmp_path / "out")),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        wait_for_line(process, r"node 8 \(SUPIRRestore\): 1/200", 600, seen)
        (pid,) = submitted_ids("".join(seen))["harbour"]
        assert comfy_server.post("/interrupt", {"prompt_id": pid})[0] == 200
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, "".join(seen) + out + err
    assert "FAILED harbour: interrupted in node 8 (SUPIRRestore)" in err
    assert not (tmp_path / "out").exists()


# --- a server killed and restarted in the middle of a batch ---

@pytest.fixture()
def restartable_server(comfy_server, tmp_path):
    """A server of its own (port, input/output/temp/user folders) sharing the session server's models and custom
    nodes, so killing it leaves the session server untouched."""
    server = ComfyServer(COMFYUI_PATH, comfy_server.models_base, folders=str(tmp_path / "restartable"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_a_server_restart_mid_batch_runs_every_job_exactly_once(restartable_server, tmp_path):
    server = restartable_server
    photos = write_photos(tmp_path / "photos", ["harbour", "portrait"], seed=4)
    out = tmp_path / "out"
    process = subprocess.Popen(client_command(server.url, *fast(3, seed=104), "--input", str(photos),
                                              "--output", str(out), "--retry-for", "300"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        wait_for_line(process, r"\[harbour\] node 8 \(SUPIRRestore\): 1/3", 600, seen)
        server.kill()
        server.start()
        rest, err = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stdout = "".join(seen) + rest
    assert process.returncode == 0, stdout + err + server.log()[-3000:]
    assert sorted(os.listdir(out)) == ["harbour.png", "portrait.png"]
    ids = submitted_ids(stdout)
    assert len(ids["harbour"]) == 1 and len(ids["portrait"]) == 1, ids
    assert "[harbour] the server does not know job" in stdout
    assert re.search(rf"^server {re.escape(server.url)} unreachable \(\w+\), retrying for another \d+ s$", stdout,
                     re.M), "the wait for the restarting server is printed"
    history = server.get("/history")
    assert sorted(history) == sorted([ids["harbour"][0], ids["portrait"][0]])
    assert all(entry["status"]["status_str"] == "success" for entry in history.values())
    saved = sorted(os.listdir(os.path.join(server.base, "output", "supir")))
    assert len(saved) == 2, f"each job must run to the end exactly once: {saved}"
