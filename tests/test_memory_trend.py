"""Memory is visible: a real `jupyter server`'s `/universal/api/status` and the monitor show the process RSS
over the last minutes (sampled on a timer), not only its value; `/metrics` carries
`process_resident_memory_bytes` (prometheus_client's process collector, which Jupyter's registry exports)."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from universal_kernel.client import RemoteRuntime
from universal_kernel.memory_trend import slope_per_s, trend_line

from .conftest import MINILM, TOKEN, start_server, stop_process, wait_for


@pytest.fixture(scope="module")
def trend_server(minilm_path, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("trend-server"), env={"UNIVERSAL_KERNEL_RSS_TREND_INTERVAL_S": "0.5"},
                       ready=lambda status: len(status["memory_trend"]["samples"]) >= 3)
    yield srv
    stop_process(srv.process)


def test_the_status_shows_the_rss_trend_and_a_load_shows_in_it(trend_server):
    trend = trend_server.status()["memory_trend"]
    samples = trend["samples"]
    times = [t for t, _ in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert trend["interval_s"] == 0.5 and trend["window_s"] >= 60
    assert [trend["first_bytes"], trend["last_bytes"]] == [samples[0][1], samples[-1][1]]
    assert trend["change_bytes"] == trend["last_bytes"] - trend["first_bytes"]
    assert trend["min_bytes"] == min(b for _, b in samples) and trend["max_bytes"] == max(b for _, b in samples)
    assert trend["span_s"] == pytest.approx(times[-1] - times[0])

    # a model loaded (its weights: tens of MiB) shows in the samples taken after it
    before = max(b for _, b in samples)
    loaded = trend_server.post("universal/api/load", {"model": MINILM})
    assert loaded.status_code == 200, loaded.text
    after_load = time.time()

    def sampled_after_the_load():
        later = [b for t, b in trend_server.status()["memory_trend"]["samples"] if t > after_load]
        return later if len(later) >= 2 else None

    later = wait_for(sampled_after_the_load, 60, "no samples after the load")
    assert max(later) > before, (before, later)
    assert trend_server.post("universal/api/unload", {"model": MINILM}).status_code == 200


def test_prometheus_exports_the_process_resident_memory(trend_server):
    response = trend_server.get("metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    rss = families["process_resident_memory_bytes"].samples
    assert len(rss) == 1 and rss[0].value > 0
    # the same process as the status' own figure: between the trend's extremes of the last seconds or near them
    status_rss = trend_server.status()["memory"]["process_rss_bytes"]
    assert abs(rss[0].value - status_rss) < status_rss / 2


def test_the_monitor_shows_the_trend_of_a_remote_server(trend_server):
    from widgets.monitor import Monitor

    monitor = Monitor(RemoteRuntime(trend_server.url, TOKEN), autostart=False)
    try:
        assert "RSS over the last" in monitor._memory.value and "MiB/min" in monitor._memory.value
    finally:
        monitor.close()


def test_the_slope_is_a_least_squares_line():
    assert slope_per_s([(0.0, 100)]) is None
    assert slope_per_s([(0.0, 100), (10.0, 200), (20.0, 300)]) == pytest.approx(10.0)
    assert slope_per_s([(0.0, 100), (10.0, 300), (20.0, 100)]) == pytest.approx(0.0)  # a burst, not a climb
    line = trend_line({"samples": [[0, 2**30], [600, 2**30 + 60 * 2**20]], "span_s": 600.0, "first_bytes": 2**30,
                       "last_bytes": 2**30 + 60 * 2**20, "change_bytes": 60 * 2**20, "min_bytes": 2**30,
                       "max_bytes": 2**30 + 60 * 2**20, "slope_bytes_per_min": 6 * 2**20})
    assert line == "RSS over the last 10 min: 1024 \u2192 1084 MiB (+60 MiB; +6.0 MiB/min; range 1024\u20131084 MiB)"


def test_the_in_memory_embedding_cache_is_bounded_in_bytes():
    import numpy as np

    from universal_kernel.tasks.embed import EmbeddingCache

    cache = EmbeddingCache(max_bytes=200_000)
    scope = ("model", True)
    for i in range(1000):
        cache.put(scope, f"text {i}", np.full(384, i, dtype=np.float32), 3)
    kept = len(cache._rows)
    assert 0 < kept < 1000 and cache.bytes <= cache.max_bytes
    assert cache.get(scope, "text 999") is not None and cache.get(scope, "text 0") is None  # oldest out first
    cache.put(scope, "text 999", np.zeros(384, dtype=np.float32), 3)  # the same row again is counted once
    assert len(cache._rows) == kept and cache.bytes <= cache.max_bytes
    cache.put(scope, "x" * 100_000, np.zeros(384, dtype=np.float32), 3)  # a long text weighs its length
    assert len(cache._rows) < kept / 2 and cache.bytes <= cache.max_bytes
    cache._rows.clear()  # emptied from outside, as benches do: the count starts again
    cache.put(scope, "again", np.zeros(384, dtype=np.float32), 1)
    assert len(cache._rows) == 1 and cache.bytes < 10_000


def test_smaps_rollup_reads_the_native_figures_of_a_process():
    from universal_kernel.memory_trend import smaps_rollup

    figures = smaps_rollup()
    assert figures["Rss"] > 0 and 0 < figures["Anonymous"] <= figures["Rss"]
    assert smaps_rollup(2**22 + 12345) == {}  # no such process: nothing, not an error


def test_a_soak_server_dumps_tracemalloc_snapshots_on_sigusr1(tmp_path):
    """What bench/soak.py --diagnose relies on, in a real process: a runtime made with the variable set."""
    import os
    import signal
    import subprocess
    import sys
    import tracemalloc

    code = ("import sys, time; from universal_kernel import Runtime; rt = Runtime(reaper=False); "
            "kept = [bytearray(1000) for _ in range(1000)]; print('ready', flush=True); time.sleep(60)")
    env = dict(os.environ, UNIVERSAL_KERNEL_TRACEMALLOC_DIR=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGUSR1)
        snapshot = tmp_path / "snapshot-1.tracemalloc"

        def loaded():  # once written whole, it loads, with what the process allocated after the runtime
            try:
                return tracemalloc.Snapshot.load(str(snapshot)).statistics("filename")
            except Exception:  # noqa: BLE001 - not there yet, or half written
                return None

        stats = wait_for(loaded, 60, "no snapshot was written")
        [kept] = [stat for stat in stats if stat.traceback[0].filename == "<string>"]
        assert kept.size >= 1000 * 1000
    finally:
        process.kill()
        process.wait()
