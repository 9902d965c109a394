"""Prometheus metrics on Jupyter's own `/metrics`: real requests to the session's `jupyter server`,
the scrape parsed with `prometheus_client.parser`, and the auth that Jupyter applies to metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.metrics import RuntimeMetrics, outcome

from .conftest import MINILM, SMOLLM, wait_for


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample of the server's /metrics: (name, sorted labels) -> value."""
    response = server.get("metrics")
    assert response.status_code == 200, response.text[:200]
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_real_requests(server):
    before = scrape(server)
    client = server.client()
    chat = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=4, temperature=0)
    texts = ["metrics one", "metrics two", "metrics one"]
    client.embeddings.create(model=MINILM, input=texts)
    client.embeddings.create(model=MINILM, input=texts)  # all three from the cache now
    after = scrape(server)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("universal_kernel_requests_total", model=SMOLLM, task="generate", outcome="ok") == 1
    assert grew("universal_kernel_requests_total", model=MINILM, task="embed", outcome="ok") == 2
    assert grew("universal_kernel_generated_tokens_total", model=SMOLLM) == chat.usage.completion_tokens
    assert grew("universal_kernel_embedded_rows_total", model=MINILM, source="computed") == 2
    assert grew("universal_kernel_embedded_rows_total", model=MINILM, source="cache") == 3 + 1
    assert grew("universal_kernel_time_to_first_token_seconds_count", model=SMOLLM, task="generate") == 1
    assert grew("universal_kernel_request_duration_seconds_count", model=MINILM, task="embed", outcome="ok") == 2
    assert value(after, "universal_kernel_request_duration_seconds_sum", model=SMOLLM, task="generate",
                 outcome="ok") > 0
    # the gauges, read at scrape time: the models loaded, the bytes each is counted for, an idle queue
    status = server.status()
    assert value(after, "universal_kernel_loaded_models") == len(status["models"])
    smollm = next(m for m in status["models"] if m["id"] == SMOLLM)
    assert value(after, "universal_kernel_model_bytes", model=SMOLLM, backend="llama_cpp") == smollm["footprint_bytes"]
    assert value(after, "universal_kernel_queue_depth", model=MINILM) == 0
    # Jupyter's own series are still there: one registry, one endpoint
    assert any(name.startswith("http_request_duration_seconds") for name, _ in after)


def test_metrics_need_the_token_as_jupyter_says(server):
    # authenticate_prometheus is on by default: no token, no metrics
    assert server.get("metrics", token=None).status_code == 403
    assert server.get("metrics", token="wrong").status_code == 403


def test_a_stream_the_client_leaves_counts_as_cancelled(server):
    labels = {"model": SMOLLM, "task": "generate", "outcome": "cancelled"}
    before = value(scrape(server), "universal_kernel_requests_total", **labels)
    response = server.post("universal/v1/chat/completions",
                           {"model": SMOLLM, "messages": [{"role": "user", "content": "Count to one hundred."}],
                            "max_tokens": 200, "temperature": 0, "stream": True}, stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith(b"data:"))
    response.close()  # the client goes away mid-stream
    wait_for(lambda: value(scrape(server), "universal_kernel_requests_total", **labels) == before + 1, 120,
             "the cancelled request to be counted")


def test_outcomes_and_a_private_registry(minilm_path, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    assert [outcome(r) for r in ("stop", "length", "tool_calls", None, "cancelled", "error", "rejected")] == \
        ["ok", "ok", "ok", "ok", "cancelled", "error", "rejected"]
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    runtime = Runtime(RuntimeConfig(model_folders=[tmp_path], keep_alive=-1))
    try:
        metrics.watch(runtime)
        metrics.watch(runtime)  # twice is once
        runtime.embed(["a private registry"], MINILM)
        text = generate_latest(registry).decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert value(samples, "universal_kernel_requests_total", model=MINILM, task="embed", outcome="ok") == 1
        assert value(samples, "universal_kernel_loaded_models") == 1
    finally:
        runtime.close()
    with pytest.raises(ValueError):
        RuntimeMetrics(registry)  # a registry refuses the names twice: hence one RuntimeMetrics per process
