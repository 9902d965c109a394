"""The process RSS over the last minutes: a server that runs for days must show whether it grows.

A daemon timer samples the RSS every `interval_s` seconds and keeps the last `window_s` seconds of samples
(a few hundred numbers: bounded). `summary()` is what `/universal/api/status` and the monitor show: the
samples, the change from the oldest to the newest and the slope of a least-squares line through them, so
a steady climb is told apart from one allocation burst.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from .devices import process_rss

#: seconds between samples; the environment sets it for tests and short soaks
DEFAULT_INTERVAL_S = float(os.environ.get("UNIVERSAL_KERNEL_RSS_TREND_INTERVAL_S", "10"))
DEFAULT_WINDOW_S = 30 * 60.0


def slope_per_s(samples: list[tuple[float, int]]) -> float | None:
    """Bytes per second of the least-squares line through (time, bytes); None under two samples."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_b = sum(b for _, b in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / var


class RssTrend:
    """Samples this process's RSS on a daemon thread until `close()`."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, window_s: float = DEFAULT_WINDOW_S, *,
                 start: bool = True):
        self.interval_s = max(0.1, float(interval_s))
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, int]] = deque(maxlen=max(2, int(self.window_s / self.interval_s) + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sample()
        if start:
            threading.Thread(target=self._run, name="universal-kernel:rss-trend", daemon=True).start()

    def sample(self) -> None:
        value = process_rss()
        with self._lock:
            self._samples.append((time.time(), value))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a figure must never stop the runtime
                pass

    def close(self) -> None:
        self._stop.set()

    def summary(self) -> dict:
        """The trend as plain data: samples [[unix time, bytes], ...], oldest first, and its figures."""
        with self._lock:
            samples = [(round(t, 3), b) for t, b in self._samples]
        first, last = samples[0], samples[-1]
        slope = slope_per_s(samples)
        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "samples": [[t, b] for t, b in samples],
            "span_s": last[0] - first[0],
            "first_bytes": first[1],
            "last_bytes": last[1],
            "min_bytes": min(b for _, b in samples),
            "max_bytes": max(b for _, b in samples),
            "change_bytes": last[1] - first[1],
            "slope_bytes_per_min": None if slope is None else slope * 60,
        }


def trend_line(trend: dict | None) -> str:
    """One line for people: "RSS over the last 12 min: 1015 → 1332 MiB (+317 MiB; +26 MiB/min)"."""
    if not trend or not trend.get("samples"):
        return ""
    mib = 2**20
    span_s = trend["span_s"]
    span = f"{span_s / 60:.0f} min" if span_s >= 120 else f"{span_s:.0f} s"
    line = (f"RSS over the last {span}: {trend['first_bytes'] / mib:.0f} \u2192 "
            f"{trend['last_bytes'] / mib:.0f} MiB ({trend['change_bytes'] / mib:+.0f} MiB")
    slope = trend.get("slope_bytes_per_min")
    if slope is not None:
        line += f"; {slope / mib:+.1f} MiB/min"
    return line + f"; range {trend['min_bytes'] / mib:.0f}\u2013{trend['max_bytes'] / mib:.0f} MiB)"


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """The kernel's totals of a process's mappings (Linux): Rss, Pss, Anonymous, Private_Dirty... in bytes;
    {} where /proc has none. Native memory (llama.cpp, torch, the C heap) shows here, not in tracemalloc."""
    try:
        text = open(f"/proc/{pid}/smaps_rollup").read()
    except OSError:
        return {}
    figures = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            figures[name.strip()] = int(parts[0]) * 1024
    return figures


def tracemalloc_dumps_from_env() -> bool:
    """For soaks (bench/soak.py --diagnose): with UNIVERSAL_KERNEL_TRACEMALLOC_DIR set, trace Python allocations
    and write a snapshot there on each SIGUSR1 (snapshot-1.tracemalloc, ...). Off otherwise: tracing costs."""
    folder = os.environ.get("UNIVERSAL_KERNEL_TRACEMALLOC_DIR")
    if not folder:
        return False
    import signal
    import tracemalloc

    count = [0]

    def dump(signum, frame):
        count[0] += 1
        tracemalloc.take_snapshot().dump(os.path.join(folder, f"snapshot-{count[0]}.tracemalloc"))

    try:
        signal.signal(signal.SIGUSR1, dump)  # the main thread only: a runtime made elsewhere is not traced
    except ValueError:
        return False
    tracemalloc.start(1)
    return True
