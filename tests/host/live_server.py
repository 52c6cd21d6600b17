"""A real ComfyUI server (``main.py --cpu``) on 127.0.0.1 for host tests: started from ``COMFYUI_PATH`` with a
writable ``--base-directory`` (models, custom_nodes, input, output, temp, user), so the ComfyUI tree itself is
only read. ``folders`` may give the server input/output/temp/user folders of its own beside a shared base."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from host_env import TORCHVISION_STUB, uses_torchvision_stub

OWN_FOLDERS = ("input", "output", "temp", "user")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui_path: str, base: str, folders: str | None = None):
        self.comfyui_path = comfyui_path
        self.models_base = base
        self.base = folders or base  # where this server's input/, output/, temp/ and user/ are
        for d in OWN_FOLDERS:
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", self.models_base,
               "--database-url", "sqlite:///" + os.path.join(self.base, "user", "comfyui.db")]
        for d in OWN_FOLDERS:
            cmd += [f"--{d}-directory", os.path.join(self.base, d)]
        return cmd

    def start(self, timeout: float = 240) -> None:
        """Start the process (on the same port and folders after a ``kill``) and wait until it serves."""
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        if uses_torchvision_stub():
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [TORCHVISION_STUB, env.get("PYTHONPATH")]))
        self.starts += 1
        self.log_path = os.path.join(self.base, f"server{self.starts}.log")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.comfyui_path, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"ComfyUI not ready after {timeout} s:\n{self.log()[-4000:]}")
                time.sleep(0.5)

    def kill(self) -> None:
        """Kill the process at once (as a crash would)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout: float = 900):
        """Queue an API-format prompt and wait for its history entry."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "supir-tests"})
        if status != 200:
            return status, body
        return 200, self.wait_for(body["prompt_id"], timeout)

    def wait_for(self, pid: str, timeout: float = 900) -> dict:
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

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()
