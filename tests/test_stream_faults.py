"""Faults under a stream, with real `jupyter server` processes that die or stop while they stream.

- A server killed (SIGKILL, its whole process group) under a `%%generate` on `%runtime use server`:
  the magic says so in one line with the tokens that arrived, keeps the partial text in --out, counts
  those tokens in the footer, and the kernel goes on.
- A server stopped (SIGTERM, or Ctrl-C twice in a terminal) while two streams run: each gets an
  OpenAI error (an error event then [DONE], or a 503 body if it had not begun), the models close,
  and the process exits within seconds.

Each test starts its own small server (SmolLM2 only): a server that gets killed cannot be shared.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics

from .conftest import SMOLLM, wait_for
from .magics_support import free_port, ip, run  # noqa: F401

TOKEN = "stream-faults-token"
STORY = "Write a very long story about a lighthouse keeper and the storms of one winter."


class OwnServer:
    """`jupyter server` with the extension and SmolLM2 preloaded, in its own process group."""

    def __init__(self, tmp: Path, tty: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = tmp / "server.log"
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
                   JUPYTER_DATA_DIR=str(tmp / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   UNIVERSAL_KERNEL_CONVERT_CACHE=str(tmp / "converted"))
        env.pop("UNIVERSAL_KERNEL_SERVER_URL", None)
        command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp}",
                   "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
                   f"--UniversalKernelApp.preload={SMOLLM}", "--UniversalKernelApp.keep_alive=-1",
                   "--UniversalKernelApp.threads=1"]
        stdin = None
        if tty:  # as in a terminal: jupyter then asks before stopping on Ctrl-C, and stops on a second one
            import pty

            self._pty, stdin = pty.openpty()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=tmp, start_new_session=True)
        if stdin is not None:
            os.close(stdin)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"jupyter server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status = self.session.get(self.url + "universal/api/status", timeout=10).json()
                if any(m["id"] == SMOLLM for m in status["models"]):
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the server did not load {SMOLLM} in time:\n{self.log_tail()}")
            time.sleep(0.3)

    def smollm_active(self) -> int:
        """Requests that hold SmolLM2 now (running or queued), as the server's status says."""
        status = requests.get(self.url + "universal/api/status", headers=self.session.headers, timeout=60).json()
        return next((m["active"] for m in status["models"] if m["id"] == SMOLLM), 0)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server's process group: nothing of it gets to say goodbye."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


@pytest.fixture
def own_server(smollm_path, tmp_path):
    srv = OwnServer(tmp_path)
    yield srv
    srv.kill()


@pytest.fixture
def terminal_server(smollm_path, tmp_path):
    srv = OwnServer(tmp_path, tty=True)
    yield srv
    srv.kill()
    os.close(srv._pty)


def test_a_killed_server_under_a_streaming_magic_is_reported(ip, own_server):  # noqa: F811
    magics = get_magics(ip)
    captured, result = run(ip, f"%runtime use server {own_server.url} --token {TOKEN}")
    assert result.success, result.error_in_exec
    remote = magics.runtime_for()
    streams = []
    opened = remote.stream

    def watched(*args, **kwargs):  # the real RemoteRuntime.stream; the test keeps the stream to watch it
        streams.append(opened(*args, **kwargs))
        return streams[-1]

    remote.stream = watched
    killed = threading.Event()

    def kill_mid_stream():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if streams and len(streams[0].parts) >= 8:
                own_server.kill()
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_mid_stream, daemon=True)
    killer.start()
    try:
        captured, result = run(ip, f"%%generate --max-tokens 1500 --temperature 0.8 --seed 1 --out cut\n{STORY}")
    finally:
        killer.join(timeout=200)
        del remote.stream
    assert killed.is_set(), "the server was not killed mid-stream"
    stream = streams[0]
    received = len(stream.parts)
    assert received >= 8

    # one line naming what happened and how many tokens arrived
    error = result.error_in_exec
    assert isinstance(error, UsageError), f"the cell did not report the lost connection: {error!r}"
    message = str(error)
    assert "\n" not in message
    match = re.search(r"the connection to the server was lost after (\d+) tokens", message)
    assert match and int(match.group(1)) == received, message
    assert "the text above is incomplete" in message and "cut" in message
    assert message in captured.stderr  # shown to the user, once, without a traceback
    assert "Traceback" not in captured.stderr

    # the partial text is kept, as displayed; the footer counts the tokens that arrived
    assert ip.user_ns["cut"] == stream.text and ip.user_ns["cut"]
    shown = captured.outputs[-2].data["text/plain"]
    assert shown == stream.text
    footer = captured.outputs[-1].data["text/plain"]
    assert f"\u00b7 {received} tokens \u00b7" in footer and "connection lost" in footer, footer
    assert "- tokens/s" not in footer  # the rate of what arrived

    # the kernel goes on: the next cell says the server is gone; a local generation works
    captured, result = run(ip, "%%generate --max-tokens 4 --temperature 0\nHello")
    assert isinstance(result.error_in_exec, UsageError) and "cannot reach the Jupyter server" in str(
        result.error_in_exec)
    run(ip, "%runtime use local")
    captured, result = run(ip, "%%generate --max-tokens 4 --temperature 0 --out after\nHello")
    assert result.success, result.error_in_exec
    assert isinstance(ip.user_ns["after"], str) and ip.user_ns["after"]


def _read_events(response, events: list, first: threading.Event) -> None:
    """Collect the SSE data lines of a streamed response until the connection closes."""
    try:
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                events.append(line[6:].decode())
                if len(events) >= 3:
                    first.set()
    except requests.RequestException as exc:
        events.append(f"<{type(exc).__name__}>")
    finally:
        first.set()


def test_sigterm_with_streams_in_flight_ends_each_with_an_error_and_exits(own_server):
    stop_with_streams_in_flight(own_server, lambda proc: proc.send_signal(signal.SIGTERM))


def test_ctrl_c_twice_in_a_terminal_with_streams_in_flight_is_the_same(terminal_server):
    def ctrl_c_twice(proc):
        proc.send_signal(signal.SIGINT)  # jupyter asks "Shut down this Jupyter server (y/[n])?"
        # the question shows that the first Ctrl-C was handled: two sent at once would arrive as one
        wait_for(lambda: "Shut down this Jupyter server" in terminal_server.log_path.read_text(errors="replace"),
                 120, lambda: f"jupyter did not ask after the first Ctrl-C:\n{terminal_server.log_tail()}")
        proc.send_signal(signal.SIGINT)  # a second Ctrl-C (within the 5 s jupyter waits) stops without asking

    stop_with_streams_in_flight(terminal_server, ctrl_c_twice)


def stop_with_streams_in_flight(own_server: OwnServer, stop) -> None:
    url = own_server.url + "universal/v1/chat/completions"
    results: list[dict] = [{} for _ in range(2)]
    threads = []
    running = threading.Event()

    def client(i: int) -> None:
        body = {"model": SMOLLM, "messages": [{"role": "user", "content": STORY}], "max_tokens": 1500,
                "temperature": 0.8, "seed": i, "stream": True}
        try:
            with own_server.session.post(url, json=body, stream=True, timeout=120) as response:
                results[i]["status"] = response.status_code
                if response.status_code != 200:  # not begun when the server stopped: an HTTP error body
                    results[i]["body"] = response.json()
                    return
                events = results[i]["events"] = []
                _read_events(response, events, running if i == 0 else threading.Event())
        except requests.RequestException as exc:
            results[i]["exception"] = repr(exc)

    for i in range(2):
        threads.append(threading.Thread(target=client, args=(i,), daemon=True))
        threads[-1].start()
        # the first request reaches the model first; the second runs beside it or waits in its queue
        wait_for(lambda: own_server.smollm_active() == i + 1, 120,
                 lambda: f"request {i} did not reach the model: {results}\n{own_server.log_tail()}")
    assert running.wait(120), f"no stream began: {results}\n{own_server.log_tail()}"
    assert own_server.proc.poll() is None
    stop(own_server.proc)
    try:  # a server that hangs on its streams never exits: the generous limit only ends the test
        code = own_server.proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit after being stopped:\n{own_server.log_tail()}")
    for t in threads:
        t.join(timeout=120)
    log = own_server.log_tail(80)
    assert "received signal" in log and "stopping" in log, log  # jupyter's own stop, not a KeyboardInterrupt
    assert code == 0, log

    streamed = results[0]
    assert streamed.get("status") == 200, results
    events = streamed["events"]
    assert events[-1] == "[DONE]", f"{events[-3:]}\n{log}"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
    assert "shutting down" in error["message"]
    assert any('"content"' in e for e in events[:-2])  # it had streamed text before
    # the second request was waiting in the queue: it ends with an OpenAI error too
    second = results[1]
    if second.get("status") == 200:
        assert second["events"][-1] == "[DONE]" and "error" in json.loads(second["events"][-2]), second
    else:
        assert second.get("status") == 503, second
        assert second["body"]["error"]["code"] == "server_shutting_down", second
    assert "universal_kernel: stopping 2 running generation(s)" in log
    assert "universal_kernel: models closed" in log
