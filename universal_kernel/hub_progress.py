"""A pull's progress in a notebook: an ipywidgets bar (bytes, rate, ETA, file n of m), text elsewhere.

`PullDisplay` is the `progress=` callback of `hub_pull.pull`: each pull starts a new bar (its first report
is "pulling manifest"), so one display serves a kernel's pulls on first use as well as `%runtime pull`.
"""

from __future__ import annotations

import sys
import time


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def describe(p) -> str:
    """One line: `ref: file 1/2 model.gguf 45.0 MB / 98.4 MB · 120.3 MB/s · ETA 0 s`."""
    if p.status == "success":
        return f"{p.ref}: {_size(p.total)} pulled"
    if p.file is None:
        return f"{p.ref}: {p.status}"
    eta = f" \u00b7 ETA {p.eta_s:.0f} s" if p.eta_s is not None else ""
    return (f"{p.ref}: file {p.file_index}/{p.file_count} {p.file} {_size(p.completed)} / {_size(p.total)}"
            f" \u00b7 {_size(p.rate)}/s{eta}")


class PullDisplay:
    """The progress of pulls, as an ipywidgets bar in a widget frontend, else text lines (a few per pull)."""

    def __init__(self, widgets: bool | None = None, text_interval_s: float = 5.0, out=None):
        if widgets is None:
            widgets = _widget_frontend()
        self.widgets = widgets
        self.text_interval_s = text_interval_s
        self.out = out
        self.bar = self.label = None
        self.lines: list[str] = []  # what the text fallback printed
        self._last_text = 0.0

    def __call__(self, p) -> None:
        line = describe(p)
        if self.widgets:
            self._widget(p, line)
            return
        now = time.monotonic()
        if p.status in ("pulling manifest", "success") or (p.file is not None and p.file_completed == 0) \
                or now - self._last_text >= self.text_interval_s:
            self._last_text = now
            self.lines.append(line)
            print(line, file=self.out or sys.stdout, flush=True)

    def _widget(self, p, line: str) -> None:
        import ipywidgets as w
        from IPython.display import display

        if self.bar is None or p.status == "pulling manifest":
            self.bar = w.FloatProgress(value=0, min=0, max=1, description="pull", bar_style="info")
            self.label = w.Label(line)
            display(w.HBox([self.bar, self.label]))
        self.bar.max = max(p.total, 1)
        self.bar.value = p.completed
        self.label.value = line
        if p.status == "success":
            self.bar.bar_style = "success"


def _widget_frontend() -> bool:
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
