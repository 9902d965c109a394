"""The runtime's Prometheus metrics, in prometheus_client's default registry.

jupyter_server serves that registry on its own `/metrics` (under `authenticate_prometheus`), so a
server with the extension exposes these next to Jupyter's own series, with nothing written by hand:
counters and histograms are updated as each request finishes (the runtime's "finished" event), and
the gauges (loaded models, their bytes, queue depth) are read from the runtimes at scrape time.
"""

from __future__ import annotations

import threading
import weakref

#: seconds: from a few milliseconds (an embedding of one text) to minutes (a long generation)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_OUTCOMES = {"cancelled": "cancelled", "error": "error", "rejected": "rejected"}


def outcome(finish_reason: str | None) -> str:
    """`ok` for a request that ran to its end (stop, length, tool calls), else how it ended."""
    return _OUTCOMES.get(finish_reason or "", "ok")


class _LoadedModels:
    """A collector of the gauges, read from the watched runtimes' caches at scrape time."""

    def __init__(self, runtimes: weakref.WeakSet):
        self.runtimes = runtimes

    def describe(self):
        return []  # nothing to check at registration: the families are built in collect()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        loaded = GaugeMetricFamily("universal_kernel_loaded_models", "Models loaded in the runtime")
        size = GaugeMetricFamily("universal_kernel_model_bytes",
                                 "Memory a loaded model is counted for (measured at load, or its estimate)",
                                 labels=["model", "backend"])
        depth = GaugeMetricFamily("universal_kernel_queue_depth",
                                  "Requests running or waiting on a loaded model", labels=["model"])
        entries = [entry for runtime in list(self.runtimes) for entry in runtime.cache.entries()]
        loaded.add_metric([], len(entries))
        for entry in entries:
            size.add_metric([entry.spec.id, entry.backend_name], entry.footprint_bytes)
            depth.add_metric([entry.spec.id], entry.worker.queue_depth)
        yield from (loaded, size, depth)


class RuntimeMetrics:
    """The metric objects, created once per process (a registry refuses a name twice)."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = REGISTRY if registry is None else registry
        self.requests = Counter("universal_kernel_requests", "Requests that reached a model",
                                ["model", "task", "outcome"], registry=registry)
        self.ttft = Histogram("universal_kernel_time_to_first_token_seconds",
                              "Time from a request's arrival to its first token (queue and load included)",
                              ["model", "task"], buckets=BUCKETS, registry=registry)
        self.duration = Histogram("universal_kernel_request_duration_seconds",
                                  "Time from a request's arrival to its end (queue and load included)",
                                  ["model", "task", "outcome"], buckets=BUCKETS, registry=registry)
        self.tokens = Counter("universal_kernel_generated_tokens", "Tokens generated", ["model"],
                              registry=registry)
        self.prompt_tokens = Counter("universal_kernel_prompt_tokens", "Prompt tokens processed",
                                     ["model", "task"], registry=registry)
        self.rows = Counter("universal_kernel_embedded_rows",
                            "Rows embedded: computed by the model, or served from the embedding cache",
                            ["model", "source"], registry=registry)
        self.runtimes: weakref.WeakSet = weakref.WeakSet()
        registry.register(_LoadedModels(self.runtimes))

    def watch(self, runtime) -> None:
        """Count `runtime`'s requests from now on, and show its loaded models."""
        if runtime not in self.runtimes:
            self.runtimes.add(runtime)
            runtime.subscribe(self._event)

    def _event(self, event: str, payload) -> None:
        if event == "finished":
            self.observe(payload)

    def observe(self, stats) -> None:
        task, model, ended = stats.kind, stats.model, outcome(stats.finish_reason)
        self.requests.labels(model, task, ended).inc()
        if ended == "rejected":
            return  # it never ran: no time or tokens to count
        self.duration.labels(model, task, ended).observe(stats.total_s)
        if stats.ttft_s is not None:
            self.ttft.labels(model, task).observe(stats.ttft_s)
        if stats.completion_tokens:
            self.tokens.labels(model).inc(stats.completion_tokens)
        if stats.prompt_tokens:
            self.prompt_tokens.labels(model, task).inc(stats.prompt_tokens)
        if stats.rows_computed:
            self.rows.labels(model, "computed").inc(stats.rows_computed)
        if stats.rows_cached:
            self.rows.labels(model, "cache").inc(stats.rows_cached)


_metrics: RuntimeMetrics | None = None
_lock = threading.Lock()


def watch(runtime) -> RuntimeMetrics:
    """The process's metrics, now counting `runtime` too."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = RuntimeMetrics()
        _metrics.watch(runtime)
        return _metrics
