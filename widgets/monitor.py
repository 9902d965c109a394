"""The runtime monitor: memory, loaded models with expiry, recent requests and a latency sparkline.

It reads a status dict (the shape of `Runtime.status()`, which the server's `/universal/api/status`
also returns) from a `source`: the in-process runtime or a `RemoteRuntime`. On an OpenAI-compatible
server without our runtime API, that dict has no models, a `note`, and the requests (with their
latencies) that the client measured itself. A daemon thread refreshes
it every `interval` seconds, so the kernel never blocks on it; the local runtime's load/unload events
refresh it at once. `refresh()` does one update synchronously.
"""

from __future__ import annotations

import html
import threading
import time
import weakref

import ipywidgets as widgets
from traitlets import Dict, Float, Int, List, Unicode

from universal_kernel.formatting import (
    MODEL_HEADERS, REQUEST_HEADERS, duration, html_table, memory_line, model_rows, precision_html, request_rows,
)
from universal_kernel.memory_trend import trend_line


def latency(request: dict):
    """What the plot shows for one request: time to first token, or total time for embeddings."""
    return request.get("ttft_s") if request.get("ttft_s") is not None else request.get("total_s")


def failures_html(failures: list[dict]) -> str:
    """One line per model whose worker died (the last few): when, of what, and its reload or why it failed."""
    lines = []
    for record in failures[-3:]:
        when = time.strftime("%H:%M:%S", time.localtime(record.get("died_at") or 0))
        line = f"worker of {record.get('model')} died at {when} ({record.get('error')})"
        if record.get("reloaded_at"):
            line += f"; loaded again at {time.strftime('%H:%M:%S', time.localtime(record['reloaded_at']))}"
        elif record.get("reload_error"):
            line += f"; loading it again failed: {record['reload_error']}"
        else:
            line += "; the next request loads it again"
        lines.append(f"<div style='color:#c00'>{html.escape(line)}</div>")
    return "".join(lines)


def sparkline(values: list, width: int = 240, height: int = 40) -> str:
    """An inline SVG of `values` (seconds), scaled to its maximum: a line with a dot on each point (one
    request is a dot, not an invisible one-point line), and the "max" label above the plot, not on it."""
    values = [v for v in values if v is not None]
    if not values:
        return f'<svg width="{width}" height="{height}"><text x="4" y="{height // 2}" font-size="11" ' \
               f'fill="#888">no requests yet</text></svg>'
    top = max(values) or 1.0
    label = 12  # a band above the plot for the label
    plot = height - label
    step = (width - 8) / max(len(values) - 1, 1)
    points = [(4 + i * step, label + plot - 3 - (v / top) * (plot - 6)) for i, v in enumerate(values)]
    if len(values) == 1:
        points = [(width / 2, points[0][1])]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="#1f77b4"/>' for x, y in points[-50:])
    return (f'<svg width="{width}" height="{height}" style="background:#fafafa">'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>{dots}'
            f'<text x="{width - 4}" y="10" font-size="10" text-anchor="end" fill="#666">max {duration(top)}</text>'
            f"</svg>")


class Monitor(widgets.VBox):
    """Live view of a runtime. Traits hold the latest figures (tests and users can read them)."""

    source_name = Unicode("local")
    interval = Float(2.0)
    rss_bytes = Int(0)
    system_available_bytes = Int(0)
    system_total_bytes = Int(0)
    gpus = List()
    models = List()
    loaded = List()  # ids of loaded models
    recent = List()
    loads = Int(0)
    finished_requests = Int(0)
    latencies = List()
    refreshes = Int(0)
    updated_at = Float(0.0)
    error = Unicode("")
    last_status = Dict()

    def __init__(self, source=None, *, interval: float = 2.0, autostart: bool = True, **kwargs):
        if source is None:
            from universal_kernel import get_runtime

            source = get_runtime()
        self.source = source
        self._title = widgets.HTML()
        self._memory = widgets.HTML()
        self._failures = widgets.HTML()  # models whose worker died
        self._models = widgets.HTML()
        self._requests = widgets.HTML()
        self._plot = widgets.HTML()
        super().__init__(children=[self._title, self._memory, self._failures, self._models, self._plot, self._requests],
                         **kwargs)
        self.interval = interval
        self.source_name = getattr(source, "where", "local")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        ref = weakref.ref(self)

        def on_event(event, payload):
            monitor = ref()
            if monitor is not None and not monitor._stop.is_set():
                monitor.refresh()

        subscribe = getattr(source, "subscribe", None)
        if subscribe is not None:
            subscribe(on_event)
        self.refresh()
        if autostart:
            self.start()

    # Updating -------------------------------------------------------------------------------
    def refresh(self) -> dict | None:
        """Read the source's status once and update the traits and the view."""
        with self._lock:
            try:
                status = self.source.status()
            except Exception as exc:  # a server gone away: show it, keep polling
                self.error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                self._title.value = f"<b>universal-kernel</b> ({self.source_name}) <span style='color:#c00'>" \
                                    f"{html.escape(self.error)}</span>"
                return None
            self.error = ""
            self._apply(status)
            return status

    def _apply(self, status: dict) -> None:
        memory = status.get("memory") or {}
        models = status.get("models") or []
        recent = status.get("recent") or []
        done = [r for r in recent if r.get("finish_reason")]
        with self.hold_trait_notifications():
            self.rss_bytes = int(memory.get("process_rss_bytes") or 0)
            self.system_available_bytes = int(memory.get("system_available_bytes") or 0)
            self.system_total_bytes = int(memory.get("system_total_bytes") or 0)
            self.gpus = list(memory.get("gpus") or [])
            self.models = models
            self.loaded = [m.get("id") for m in models]
            self.recent = recent
            self.loads = int(status.get("loads") or 0)
            self.finished_requests = len(done)
            self.latencies = [latency(r) for r in done]
            self.refreshes += 1
            self.updated_at = time.time()
            self.last_status = status
        self._render()

    def _render(self) -> None:
        clock = time.strftime("%H:%M:%S", time.localtime(self.updated_at))
        self._title.value = f"<b>universal-kernel</b> ({self.source_name}) \u00b7 updated {clock}"
        note = (self.last_status or {}).get("note")  # a server without runtime API: the client's own figures
        self._memory.value = html.escape(note or memory_line(self.last_status or {}))
        trend = trend_line((self.last_status or {}).get("memory_trend"))
        if trend:
            self._memory.value += f"<br>{html.escape(trend)}"
        self._failures.value = failures_html((self.last_status or {}).get("worker_failures") or [])
        self._models.value = html_table(MODEL_HEADERS, model_rows(self.models)) + precision_html(self.models)
        last = [r for r in self.recent if r.get("finish_reason")][-8:]
        self._requests.value = html_table(REQUEST_HEADERS, request_rows(last))
        self._plot.value = "<div style='font-size:85%;color:#666'>recent latency (TTFT; total for " \
                           "embeddings)</div>" + sparkline(self.latencies[-50:])

    # Background refresh ---------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        ref = weakref.ref(self)
        stop = self._stop

        def loop():
            while not stop.wait(max(0.2, getattr(ref(), "interval", 2.0) or 2.0)):
                monitor = ref()
                if monitor is None:
                    return
                monitor.refresh()
                del monitor

        self._thread = threading.Thread(target=loop, name="universal-kernel:monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def close(self) -> None:
        self.stop()
        super().close()
