"""The monitor widget's traits follow the runtime: a load, a finished request, an unload."""

from __future__ import annotations

import time

import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.widgets import Monitor, sparkline
from universal_kernel.widgets.stream_display import footer_text, render_bundle
from universal_kernel.stats import RequestStats

from .conftest import FRANCE, SMOLLM


def wait_for(condition, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def fresh_runtime(smollm_path, tmp_path):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], keep_alive=-1))
    yield rt
    rt.close()


def test_traits_change_on_load_request_and_unload(fresh_runtime):
    monitor = Monitor(fresh_runtime, interval=0.2)
    try:
        assert monitor.running and monitor.source_name == "local"
        assert monitor.loaded == [] and monitor.loads == 0 and monitor.finished_requests == 0
        assert monitor.rss_bytes > 0 and monitor.system_total_bytes > monitor.system_available_bytes > 0
        seen = []
        monitor.observe(lambda change: seen.append(change["new"]), names="loaded")

        fresh_runtime.load(SMOLLM)  # the "loaded" event refreshes at once, without waiting for the timer
        assert monitor.loaded == [SMOLLM] and monitor.loads == 1 and seen == [[SMOLLM]]
        model = monitor.models[0]
        assert model["backend"] == "llama_cpp" and model["device"] == "cpu" and model["size_bytes"] > 50e6
        assert "llama_cpp" in monitor._models.value
        # held by the load when the event fired; idle (kept forever) at the next background refresh
        assert wait_for(lambda: "never" in monitor._models.value)

        completion = fresh_runtime.generate(SMOLLM, messages=[{"role": "user", "content": FRANCE}],
                                            params={"temperature": 0, "max_tokens": 8})
        # the background thread picks the finished request up
        assert wait_for(lambda: monitor.finished_requests == 1)
        request = monitor.recent[-1]
        assert request["completion_tokens"] == completion.completion_tokens
        assert monitor.latencies == [pytest.approx(completion.stats.ttft_s)]
        assert "<polyline" in monitor._plot.value and "tokens/s" in monitor._requests.value

        fresh_runtime.unload(SMOLLM)
        assert monitor.loaded == [] and seen[-1] == []
    finally:
        monitor.close()
    assert wait_for(lambda: not monitor._thread.is_alive(), timeout=5)


def test_refresh_is_synchronous_and_shows_errors():
    class Broken:
        def status(self):
            raise ConnectionError("server gone")

    monitor = Monitor(Broken(), autostart=False)
    assert not monitor.running and "server gone" in monitor.error
    assert monitor.refresh() is None


def test_refresh_counts_requests_from_a_status_dict():
    status = {"memory": {"process_rss_bytes": 2**20, "system_available_bytes": 2**30, "system_total_bytes": 2**31,
                         "gpus": [{"index": 0, "total_bytes": 2**33, "free_bytes": 2**32, "allocated_bytes": 2**30}]},
              "models": [{"id": "m", "backend": "llama_cpp", "device": "cuda", "size_bytes": 2**25,
                          "expires_in_s": 42.0, "keep_alive": 300}],
              "recent": [{"model": "m", "kind": "generate", "ttft_s": 0.02, "total_s": 0.5, "finish_reason": "stop"},
                         {"model": "m", "kind": "embed", "ttft_s": None, "total_s": 0.1, "finish_reason": "stop"},
                         {"model": "m", "kind": "generate", "finish_reason": None}],
              "loads": 3}

    class Fixed:
        def status(self):
            return status

    monitor = Monitor(Fixed(), autostart=False)
    assert monitor.finished_requests == 2 and monitor.latencies == [0.02, 0.1] and monitor.loads == 3
    assert "GPU0" in monitor._memory.value and "42 s" in monitor._models.value
    assert monitor.refreshes == 1 and monitor.refresh() is status and monitor.refreshes == 2


def test_sparkline_and_render_helpers():
    assert "no requests" in sparkline([])
    svg = sparkline([0.1, 0.3, None, 0.2])
    assert svg.count(",") == 3 and "max 300 ms" in svg
    assert render_bundle("# hi", "markdown") == {"text/markdown": "# hi", "text/plain": "# hi"}
    assert render_bundle('```json\n{"a": 1}\n```', "json")["application/json"] == {"a": 1}
    assert render_bundle("not json", "json") == {"text/plain": "not json"}
    stats = RequestStats(model="m", backend="llama_cpp", kind="generate", created_at=0, ttft_s=0.025,
                         tokens_per_s=61.23, completion_tokens=12)
    line = footer_text("m", stats, memory_bytes=512 * 2**20)
    assert line == "m (llama_cpp) \u00b7 TTFT 25 ms \u00b7 61.2 tokens/s \u00b7 12 tokens \u00b7 RSS 512 MiB"


def test_one_request_draws_a_point_and_the_label_stays_above_the_line():
    import re

    one = sparkline([0.2])
    assert one.count("<circle") == 1  # a one-point polyline draws nothing; the dot shows the request
    many = sparkline([0.1, 0.4, 0.2, 0.4])
    ys = [float(y) for y in re.findall(r'cy="([\d.]+)"', many)]
    label_y = float(re.search(r'<text x="[\d.]+" y="([\d.]+)"', many).group(1))
    assert len(ys) == 4 and min(ys) > label_y + 2  # the highest point lies below the label's baseline
