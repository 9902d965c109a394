"""%runtime in a real InteractiveShell: status, models, load, unload, alias, monitor, use."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics
from universal_kernel.magics.runtime_magic import ModelList, RuntimeStatus

from .conftest import MINILM, SMOLLM
from .magics_support import free_port, ip, run  # noqa: F401


def test_status_reports_models_memory_and_requests(ip, runtime):
    runtime.generate(SMOLLM, prompt="Hi", params={"max_tokens": 2})
    _, result = run(ip, "%runtime status")
    status = result.result
    assert isinstance(status, RuntimeStatus)
    assert {m["id"] for m in status["models"]} >= {SMOLLM, MINILM}
    text = repr(status)
    loaded = len(runtime.cache.entries())  # the two defaults, and whatever earlier tests left loaded
    assert "process RSS" in text and f"loaded models ({loaded})" in text and "recent requests" in text
    assert SMOLLM in status._repr_html_()


def test_models_lists_every_servable_model(ip):
    _, result = run(ip, "%runtime models")
    models = result.result
    assert isinstance(models, ModelList)
    by_id = {m["id"]: m for m in models}
    assert by_id[SMOLLM]["loaded"] and by_id[MINILM]["task"] == "embed"
    assert "loaded" in repr(models) and "<table" in models._repr_html_()


def test_alias_load_and_unload(ip, runtime):
    captured, result = run(ip, f"%runtime alias tiny-chat {SMOLLM}")
    assert result.success and "tiny-chat ->" in captured.stdout and ".gguf" in captured.stdout
    loads = runtime.cache.loads
    captured, _ = run(ip, "%runtime load tiny-chat --keep-alive -1")
    assert "loaded tiny-chat" in captured.stdout and "llama_cpp" in captured.stdout
    assert runtime.cache.loads == loads  # the same file, already loaded: no second load
    captured, _ = run(ip, f"%runtime unload {SMOLLM}")
    assert "unloaded" in captured.stdout
    assert SMOLLM not in {m["id"] for m in runtime.status()["models"]}
    captured, _ = run(ip, f"%runtime load {SMOLLM} --keep-alive -1")
    assert runtime.cache.loads == loads + 1
    assert SMOLLM in {m["id"] for m in runtime.status()["models"]}


def test_monitor_returns_a_live_widget(ip):
    _, result = run(ip, "%runtime monitor --interval 5")
    monitor = result.result
    try:
        assert monitor.source_name == "local" and monitor.running and monitor.interval == 5
        assert SMOLLM in monitor.loaded
    finally:
        monitor.close()
    assert not monitor.running


def test_use_local_and_server(ip):
    magics = get_magics(ip)
    captured, _ = run(ip, "%runtime use local")
    assert "in-process" in captured.stdout and magics.use_server is False
    port = free_port()
    with pytest.raises(UsageError, match="cannot reach the Jupyter server"):
        ip.run_line_magic("runtime", f"use server http://127.0.0.1:{port}/ --token x")
    assert magics.use_server is False


@pytest.mark.parametrize("line, message", [
    ("", "the following arguments are required"),
    ("explode", "unknown %runtime action"),
    ("status extra", "usage: %runtime status"),
    ("load", "usage: %runtime load MODEL"),
    ("unload", "usage: %runtime unload"),
    ("alias onlyname", "usage: %runtime alias NAME REF"),
    ("alias escape ../../../etc/passwd", "passwd"),
    ("load no-such-model-here", "no-such-model-here"),
    ("use", "usage: %runtime use local"),
    ("use elsewhere", "usage: %runtime use local"),
    ("load x --keep-alive soon", "invalid float value"),
])
def test_usage_errors_are_one_line(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("runtime", line)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_magics_defaults_are_configurable(ip):
    from traitlets.config import Config

    from universal_kernel.magics.core import UniversalKernelMagics

    config = Config()
    config.UniversalKernelMagics.generation_model = "my-model"
    config.UniversalKernelMagics.default_format = "text"
    config.UniversalKernelMagics.embed_chunk_rows = 64
    magics = UniversalKernelMagics(shell=None, config=config)
    assert (magics.generation_model, magics.default_format, magics.embed_chunk_rows) == ("my-model", "text", 64)


def test_server_discovery_prefers_the_kernels_own_server(tmp_path, monkeypatch):
    import json
    import os

    from universal_kernel.client import ServerUnavailable, find_server

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("UNIVERSAL_KERNEL_SERVER_URL", raising=False)
    with pytest.raises(ServerUnavailable, match="no running Jupyter server"):
        find_server()
    for name, pid, port, token in [("a", os.getpid(), 1111, "mine"), ("b", os.getppid(), 2222, "other"),
                                   ("c", 2**22 + 12345, 3333, "dead")]:
        (tmp_path / f"jpserver-{name}.json").write_text(json.dumps(
            {"url": f"http://127.0.0.1:{port}/lab-base/", "base_url": "/lab-base/", "token": token, "pid": pid,
             "root_dir": "/nowhere"}))
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    assert find_server() == ("http://127.0.0.1:1111/lab-base/", "mine")
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getppid()))
    assert find_server() == ("http://127.0.0.1:2222/lab-base/", "other")
    monkeypatch.setenv("UNIVERSAL_KERNEL_SERVER_URL", "http://example.invalid:9/base")
    monkeypatch.setenv("UNIVERSAL_KERNEL_SERVER_TOKEN", "configured")
    assert find_server() == ("http://example.invalid:9/base/", "configured")
