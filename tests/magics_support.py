"""Helpers for the magics and widgets tests: a real InteractiveShell on the session's runtime."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """Wraps a runtime: records what the magics ask of it, then lets the real runtime do it."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.calls: list[tuple[str, tuple, dict]] = []

    def stream(self, *args, **kwargs):
        self.calls.append(("stream", args, kwargs))
        return self.runtime.stream(*args, **kwargs)

    def embed(self, *args, **kwargs):
        self.calls.append(("embed", args, kwargs))
        return self.runtime.embed(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.runtime, name)

    @property
    def last(self) -> dict:
        return self.calls[-1][2]


def make_shell(runtime):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "universal_kernel")
    from universal_kernel.magics import get_magics

    magics = get_magics(shell)
    magics.set_local_runtime(runtime)
    magics.use_server = False
    magics.embed_chunk_rows = 256
    magics.progress_min_rows = 512
    return shell, magics


def run(shell, code: str):
    """Run a cell; return (captured output, ExecutionResult)."""
    with capture_output() as captured:
        result = shell.run_cell(code)
    return captured, result


def bundles(captured) -> list[dict]:
    return [o.data for o in captured.outputs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A real `jupyter server` subprocess with the extension, its own runtime dir and token."""

    def __init__(self, tmp: Path, token: str = "test-token-123"):
        self.port = free_port()
        self.token = token
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runtime_dir = tmp / "runtime"
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(self.runtime_dir), HF_HUB_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", UNIVERSAL_KERNEL_KEEP_ALIVE="-1")
        self.env.pop("UNIVERSAL_KERNEL_SERVER_URL", None)
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "server", "--allow-root", "--no-browser", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp}",
             "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {(tmp / 'server.log').read_text()[-2000:]}")
            try:
                self.get("universal/api/status")
                return
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("jupyter server did not start in 90 s")

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str):
        return self.request("GET", path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture
def ip(runtime):
    shell, magics = make_shell(runtime)
    yield shell
    magics.set_local_runtime(runtime)
    magics.use_server = False
