"""--server and `%runtime use server` against a real `jupyter server` with the extension."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
from IPython.core.error import UsageError
from jupyter_client import BlockingKernelClient

from universal_kernel.magics import get_magics
from universal_kernel.client import RemoteRuntime

from .conftest import FRANCE, MINILM, SMOLLM, wait_for
from .magics_support import JupyterServer, ip, run  # noqa: F401
from .test_magics_kernel import execute, value


@pytest.fixture(scope="module")
def server(smollm_path, minilm_path, tmp_path_factory):
    srv = JupyterServer(tmp_path_factory.mktemp("jupyter"))
    yield srv
    srv.stop()


def server_kernel(server: JupyterServer) -> tuple[str, BlockingKernelClient]:
    """A kernel started by the server itself (as a notebook's would be), reached through its connection file."""
    kernel_id = server.request("POST", "api/kernels", {"name": "python3"})["id"]
    kc = BlockingKernelClient(connection_file=str(server.runtime_dir / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return kernel_id, kc


def models_named(status: dict, name: str) -> list[dict]:
    return [m for m in status["models"] if m["id"] == name]


def http_greedy(server: JupyterServer, max_tokens: int = 16) -> str:
    """The server's own greedy answer to FRANCE over its OpenAI API: what `--server` magics must show.

    What the tiny model answers depends on the CPU (SPEC §6); the doors must agree on this machine.
    """
    reply = server.request("POST", "universal/v1/chat/completions",
                           {"model": SMOLLM, "messages": [{"role": "user", "content": FRANCE}],
                            "temperature": 0, "max_tokens": max_tokens})
    return reply["choices"][0]["message"]["content"]


def test_two_kernels_share_one_loaded_model(server):
    before = server.get("universal/api/status")
    # another test of this module may have loaded either model already; the kernels load what is missing
    missing = {SMOLLM, MINILM} - {m["id"] for m in before["models"]}
    requests = {name: sum(m["figures"]["requests"] for m in models_named(before, name)) for name in (SMOLLM, MINILM)}
    kernels = [server_kernel(server) for _ in range(2)]
    answers = []
    try:
        for i, (_, kc) in enumerate(kernels):
            reply, _ = execute(kc, "%load_ext universal_kernel\nfrom universal_kernel import get_runtime")
            assert reply["status"] == "ok", reply
            reply, _ = execute(kc, f"%%generate --server --temperature 0 --max-tokens 16 --out answer\n{FRANCE}",
                               timeout=300)
            assert reply["status"] == "ok", reply
            answers.append(value(kc, "answer"))
            reply, _ = execute(kc, f"%embed ['shared model {i}', 'second text'] --server --out vectors", timeout=300)
            assert reply["status"] == "ok", reply
            assert value(kc, "(vectors.shape, str(vectors.dtype))") == ((2, 384), "float32")
            # the kernel itself loaded nothing: the work ran on the server's runtime
            assert value(kc, "get_runtime().cache.loads") == 0
        # both kernels got the text the server's OpenAI API gives
        assert answers[0] and answers[0] == answers[1] == http_greedy(server)
        status = server.get("universal/api/status")
        assert len(models_named(status, SMOLLM)) == 1 and len(models_named(status, MINILM)) == 1
        assert status["loads"] - before["loads"] == len(missing)  # one load per model, for both kernels
        assert models_named(status, SMOLLM)[0]["figures"]["requests"] >= requests[SMOLLM] + 2
        assert models_named(status, MINILM)[0]["figures"]["requests"] >= requests[MINILM] + 2
    finally:
        for kernel_id, kc in kernels:
            kc.stop_channels()
            server.request("DELETE", f"api/kernels/{kernel_id}")


def test_runtime_use_server_status_monitor_load_unload(ip, server):
    magics = get_magics(ip)
    captured, result = run(ip, f"%runtime use server {server.url} --token {server.token}")
    assert result.success, result.error_in_exec
    assert magics.use_server and server.url in captured.stdout
    try:
        captured, result = run(ip, f"%%generate --temperature 0 --max-tokens 16 --out remote\n{FRANCE}")
        assert result.success, result.error_in_exec
        assert ip.user_ns["remote"] and ip.user_ns["remote"] == http_greedy(server)
        footer = captured.outputs[-1].data["text/plain"]
        assert SMOLLM in footer and "(server)" in footer and "TTFT" in footer and "RSS" in footer

        _, result = run(ip, "%runtime status")
        assert models_named(result.result, SMOLLM) and "loaded models" in repr(result.result)
        _, result = run(ip, "%runtime models")
        assert {m["id"] for m in result.result} >= {SMOLLM, MINILM}

        _, result = run(ip, "%runtime monitor")
        monitor = result.result
        try:
            assert monitor.source_name == "server" and SMOLLM in monitor.loaded
            before = monitor.refreshes
            run(ip, f"%%generate --temperature 0 --max-tokens 4\n{FRANCE}")
            monitor.refresh()
            assert monitor.refreshes > before and monitor.recent[-1]["finish_reason"] in ("stop", "length")
            assert monitor.recent[-1]["completion_tokens"] <= 4 and monitor.latencies[-1] > 0

            captured, _ = run(ip, f"%runtime unload {MINILM}")
            assert "unloaded" in captured.stdout
            monitor.refresh()
            assert MINILM not in monitor.loaded
            captured, _ = run(ip, f"%runtime load {MINILM} --keep-alive -1")
            assert "loaded all-minilm-l6-v2 on the server" in captured.stdout
            monitor.refresh()
            assert MINILM in monitor.loaded
        finally:
            monitor.close()

        raw = ip.run_line_magic("embed", "['raw vectors from the server'] --no-normalize")
        unit = ip.run_line_magic("embed", "['raw vectors from the server']")
        assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3
        assert abs(float(np.linalg.norm(unit[0])) - 1.0) < 1e-4
        with pytest.raises(UsageError, match="aliases of the server"):
            ip.run_line_magic("runtime", f"alias x {SMOLLM}")
    finally:
        run(ip, "%runtime use local")
    assert not magics.use_server


def test_bad_token_is_a_one_line_usage_error(ip, server):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("runtime", f"use server {server.url} --token wrong")
    assert "refused the token" in str(info.value) and "\n" not in str(info.value)


def test_discovery_from_the_runtime_files(server, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(server.runtime_dir))
    monkeypatch.delenv("UNIVERSAL_KERNEL_SERVER_URL", raising=False)
    remote = RemoteRuntime.discover()
    assert remote.base == server.url and remote.token == server.token
    assert remote.embed(["discovered"]).vectors.shape == (1, 384)


def test_interrupt_drops_the_connection_and_the_server_cancels(ip, server):
    streams = []

    class WatchedRuntime(RemoteRuntime):
        """The real remote runtime; the test only keeps the streams it opens, to see pieces arrive."""

        def stream(self, *args, **kwargs):
            streams.append(super().stream(*args, **kwargs))
            return streams[-1]

    magics = get_magics(ip)
    magics.set_local_runtime(WatchedRuntime(server.url, server.token))  # --server-free path to the same server
    main = threading.main_thread().ident
    sent = threading.Event()

    def interrupt_mid_stream():
        # Wait for this magic's own stream to show pieces: a job left running by an earlier test
        # must not set off the interrupt before the request is made.
        deadline = time.time() + 120
        while time.time() < deadline:
            if streams and len(streams[0].parts) >= 5:
                signal.pthread_kill(main, signal.SIGINT)
                sent.set()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=interrupt_mid_stream, daemon=True)
    thread.start()
    interrupted = False
    try:
        ip.run_cell_magic("generate", "--max-tokens 1500 --temperature 0.8 --out cut",
                          "Write a very long story about a lighthouse keeper.")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        thread.join(timeout=130)
    pieces = len(streams[0].parts) if streams else 0
    assert interrupted, f"the magic ran to its end: interrupt sent {sent.is_set()}, pieces read {pieces}"
    assert isinstance(ip.user_ns["cut"], str)
    status = wait_for(lambda: (s := server.get("universal/api/status")) and not models_named(s, SMOLLM)[0]["running"]
                      and s["recent"][-1]["finish_reason"] == "cancelled" and s, 120,
                      lambda: f"the server did not cancel: {server.get('universal/api/status')}")
    model = models_named(status, SMOLLM)[0]
    assert not model["running"] and model["queue_depth"] == 0
    assert status["recent"][-1]["finish_reason"] == "cancelled"
    assert status["recent"][-1]["completion_tokens"] < 1500
