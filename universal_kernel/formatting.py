"""Figures as people read them, shared by the magics' tables, the monitor and the stream footer."""

from __future__ import annotations


def mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def expiry(model: dict) -> str:
    """When a loaded model (a `status()["models"]` entry) will be unloaded."""
    if model.get("pinned"):  # preloaded: until a keep_alive is given for it
        return "pinned"
    if model.get("active") or model.get("running"):
        return "in use"
    if model.get("expires_in_s") is None:
        return "never" if (model.get("keep_alive") or 0) < 0 else "-"
    return f"in {model['expires_in_s']:.0f} s"


# The status tables: one renderer for `%runtime status` and the monitor -------------------------
MODEL_HEADERS = ["model", "tasks", "backend", "device", "precision", "size", "memory", "expires in", "running",
                 "queue", "requests"]
REQUEST_HEADERS = ["model", "task", "queue wait", "TTFT", "tokens/s", "tokens", "total", "finish"]


def tokens(request: dict) -> str:
    """Generated tokens; for the other tasks, the input tokens ("12 in")."""
    if request.get("kind") not in (None, "generate"):
        return f"{request.get('prompt_tokens', 0)} in"
    return str(request.get("completion_tokens", 0))


def running(model: dict) -> str:
    """Requests running now, of how many that may run together ("3/4": generations decoded in one batch)."""
    if "sequences" not in model:  # a runtime from before batching
        return "1" if model.get("running") else "0"
    return f"{model['sequences']}/{model.get('parallel', 1)}"


def model_rows(models: list[dict]) -> list[list]:
    return [[m.get("id"), ", ".join(m.get("tasks") or [m.get("task") or "-"]), m.get("backend"), m.get("device"),
             m.get("precision") or "-", mib(m.get("size_bytes")),
             mib(m.get("footprint_bytes") or m.get("measured_bytes")), expiry(m), running(m),
             m.get("queue_depth", 0) - m.get("sequences", 1 if m.get("running") else 0),
             (m.get("figures") or {}).get("requests", 0)] for m in models]


def precision_notes(models: list[dict]) -> list[str]:
    """One line per model whose precision has a reason: which precision it runs in, and why."""
    return [f"{m.get('id')}: {m['precision']}, {m['precision_reason']}" for m in models
            if m.get("precision") and m.get("precision_reason")]


def precision_html(models: list[dict]) -> str:
    notes = precision_notes(models)
    if not notes:
        return ""
    import html

    return ("<div style='font-size:85%;color:#666'>precision: " + "; ".join(html.escape(n) for n in notes)
            + "</div>")


def request_rows(recent: list[dict]) -> list[list]:
    """Newest first."""
    return [[r.get("model"), r.get("kind"), duration(r.get("queue_wait_s")), duration(r.get("ttft_s")),
             f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-", tokens(r), duration(r.get("total_s")),
             r.get("finish_reason") or "running"] for r in reversed(recent)]


def memory_line(status: dict) -> str:
    memory = status.get("memory") or {}
    line = (f"process RSS {mib(memory.get('process_rss_bytes'))} \u00b7 system "
            f"{mib(memory.get('system_available_bytes'))} available of {mib(memory.get('system_total_bytes'))}")
    budget = status.get("budget") or {}
    if budget.get("budget_bytes"):
        line += f" \u00b7 models {mib(budget.get('used_bytes'))} of a {mib(budget['budget_bytes'])} budget"
    for i, gpu in enumerate(memory.get("gpus") or []):
        line += (f" \u00b7 GPU{gpu.get('index', i)} {mib(gpu.get('allocated_bytes'))} allocated, "
                 f"{mib(gpu.get('free_bytes'))} free of {mib(gpu.get('total_bytes'))}")
    return line


def text_table(headers: list[str], rows: list[list]) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), *(line(r) for r in rows)])


def html_table(headers: list[str], rows: list[list]) -> str:
    import html

    if not rows:
        return '<div style="color:#888">none</div>'
    head = "".join(f"<th style='text-align:left;padding:0 8px'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left;padding:0 8px'>{html.escape(str(c))}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table style='font-size:90%'><tr>{head}</tr>{body}</table>"
