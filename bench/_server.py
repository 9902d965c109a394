"""A real `jupyter server` with the universal_kernel extension, for the HTTP benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "bench-token"


def server_ext_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("universal_kernel.server_ext.handlers") is not None
    except ModuleNotFoundError:
        return False


class BenchServer:
    def __init__(self, preload: list[str], threads: int, timeout: float = 240, extra: tuple[str, ...] = ()):
        import requests

        self.tmp = tempfile.TemporaryDirectory()
        home = Path(self.tmp.name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/universal"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   JUPYTER_DATA_DIR=str(home / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   UNIVERSAL_KERNEL_CONVERT_CACHE=str(home / "converted"))
        command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={home}",
                   "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
                   "--UniversalKernelApp.keep_alive=-1", f"--UniversalKernelApp.threads={threads}"]
        command += [f"--UniversalKernelApp.preload={m}" for m in preload] + list(extra)
        self.log = open(home / "server.log", "wb")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=home)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {self.log_tail()}")
            try:
                loaded = {m["id"] for m in self.status()["models"]}
                if loaded >= set(preload):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"jupyter server did not load {preload} in time: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self) -> str:
        self.log.flush()
        return (Path(self.tmp.name) / "server.log").read_text(errors="replace")[-3000:]

    def status(self) -> dict:
        r = self.session.get(f"{self.base}/api/status", timeout=30)
        r.raise_for_status()
        return r.json()

    def stream_completion(self, body: dict, session=None):
        """Yield (time, text piece) for each streamed choice; ends at [DONE]."""
        session = session or self.session
        with session.post(f"{self.base}/v1/completions", json=dict(body, stream=True), stream=True,
                          timeout=300) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(event["error"])
                for choice in event.get("choices", []):
                    yield time.perf_counter(), choice.get("text") or ""

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.tmp.cleanup()
