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
    if model.get("active") or model.get("running"):
        return "in use"
    if model.get("expires_in_s") is None:
        return "never" if (model.get("keep_alive") or 0) < 0 else "-"
    return f"in {model['expires_in_s']:.0f} s"
