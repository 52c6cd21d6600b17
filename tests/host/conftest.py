"""Tier-2 (host) fixtures: ComfyUI imported in-process on the CPU, tiny SDXL-layout models with seeded weights,
tiny SUPIR files in the official layout, and a real ComfyUI server on 127.0.0.1 with this pack loaded."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from host_env import TORCHVISION_STUB, setup  # noqa: E402

NEEDS_TORCHVISION_STUB = setup(COMFYUI_PATH) if COMFYUI_PATH else False


@pytest.fixture(scope="session")
def tiny_vae():
    from tiny_models import tiny_vae as build
    return build(seed=3)


@pytest.fixture()
def tiny_model():
    from tiny_models import tiny_sdxl
    return tiny_sdxl(seed=0)


@pytest.fixture(scope="session")
def tiny_supir_sd(tiny_vae):
    from tiny_models import supir_state_dict
    return supir_state_dict(tiny_vae)


@pytest.fixture(scope="session")
def tiny_supir_file(tmp_path_factory, tiny_supir_sd):
    path = tmp_path_factory.mktemp("supir") / "tiny_supir.ckpt"
    torch.save({"state_dict": tiny_supir_sd}, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_supir(tiny_supir_file):
    from supir_restore.supir.loader import load_supir
    return load_supir(tiny_supir_file, "fp32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process on 127.0.0.1; ``base`` holds its models, input, output and custom_nodes."""

    def __init__(self, base, port):
        self.base, self.port = base, port
        self.url = f"http://127.0.0.1:{port}"
        self.process = None
        self.log_path = os.path.join(base, "server.log")

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt, timeout=900):
        """Queue an API-format prompt and wait for its history entry."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "supir-tests"})
        if status != 200:
            return status, body
        return 200, self.wait_for(body["prompt_id"], timeout)

    def wait_for(self, pid, timeout=900):
        """The history entry of prompt ``pid`` once it has finished (successfully, with an error or interrupted)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid]["status"].get("completed") is not None and (
                    hist[pid]["status"]["completed"] or hist[pid]["status"]["status_str"] == "error"):
                return hist[pid]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited; log:\n{self.log()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s; log:\n{self.log()[-4000:]}")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def write_tiny_checkpoint(path, model_patcher, vae, clip):
    """An SGM-layout SDXL checkpoint (UNet, VAE and both text encoders) in fp16, as CheckpointLoaderSimple reads."""
    import safetensors.torch
    sd = model_patcher.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """ComfyUI's main.py --cpu with this pack and the test shim loaded; stopped by PID at the end."""
    import safetensors.torch
    from tiny_models import full_vae, supir_state_dict, tiny_clip, tiny_sdxl
    base = tmp_path_factory.mktemp("comfy_server")
    for d in ("custom_nodes", "models/checkpoints", "models/supir", "models/loras", "input", "output", "temp", "user"):
        os.makedirs(base / d, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / "supir_restore")
    os.symlink(os.path.join(HERE, "shim_pack"), base / "custom_nodes" / "supir_test_shim")
    vae = full_vae(seed=5)
    write_tiny_checkpoint(base / "models/checkpoints/tiny_sdxl.safetensors", tiny_sdxl(seed=0), vae, tiny_clip(seed=2))
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in supir_state_dict(vae).items()},
                                str(base / "models/supir/tiny_supir_fp16.safetensors"))
    with open(base / "models/supir/corrupt.safetensors", "wb") as f:
        f.write(b"\x00" * 100)
    (base / "extra_model_paths.yaml").write_text(
        f"supir_tests:\n  base_path: {base}\n  custom_nodes: custom_nodes\n  checkpoints: models/checkpoints\n"
        f"  supir: models/supir\n  loras: models/loras\n  is_default: true\n")
    server = ComfyServer(str(base), _free_port())
    env = dict(os.environ)
    if NEEDS_TORCHVISION_STUB:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TORCHVISION_STUB, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(server.port),
           "--disable-auto-launch", "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
           "--input-directory", str(base / "input"), "--output-directory", str(base / "output"),
           "--temp-directory", str(base / "temp"), "--user-directory", str(base / "user"),
           "--database-url", "sqlite:///:memory:"]
    with open(server.log_path, "w") as log:
        server.process = subprocess.Popen(cmd, cwd=COMFYUI_PATH, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {server.process.returncode}:\n{server.log()[-4000:]}")
            try:
                server.get("/system_stats")
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"ComfyUI not ready after 180 s:\n{server.log()[-4000:]}")
                time.sleep(0.5)
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(server.process.pid, 9)
            server.process.wait()


@pytest.fixture(scope="session")
def tiny_clip():
    from tiny_models import tiny_clip as build
    return build(seed=2)
