"""Devices: which one a backend uses, its dtype and threads, and the memory report.

torch is consulted only when it is already imported or a backend asks for a device, so that
loading the extension stays fast.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from dataclasses import dataclass

import psutil

from .errors import InvalidRequest

_VALID = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu", "cuda", "mps"
    index: int = 0

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("cuda", "mps")

    def __str__(self) -> str:
        return self.torch_name


def pick_device(preference: str = "auto") -> Device:
    """CUDA, then MPS, then CPU; UNIVERSAL_KERNEL_DEVICE overrides the preference."""
    choice = (os.environ.get("UNIVERSAL_KERNEL_DEVICE") or preference or "auto").lower()
    kind, _, index = choice.partition(":")
    if kind not in _VALID:
        raise InvalidRequest(f"unknown device {choice!r}; use one of {', '.join(_VALID)}")
    if kind == "cpu":
        return Device("cpu")
    import torch

    if kind in ("auto", "cuda") and torch.cuda.is_available():
        return Device("cuda", int(index or 0))
    mps = getattr(torch.backends, "mps", None)
    if kind in ("auto", "mps") and mps is not None and mps.is_available():
        return Device("mps")
    if kind != "auto":
        raise InvalidRequest(f"device {choice!r} is not available on this machine")
    return Device("cpu")


def torch_dtype(device: Device):
    import torch

    if device.kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.kind == "mps":
        return torch.float16
    return torch.float32


def cpu_threads(configured: int | None = None) -> int:
    if configured:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def loaded_torch():
    """torch when it is already imported completely, else None (it is never imported for this).

    While another thread is still importing torch, `sys.modules` already holds the half-made module,
    and touching `torch.cuda` then raises "partially initialized module" (a monitor's or a status
    call's probe during a kernel's first `%embed`).
    """
    torch = sys.modules.get("torch")
    if torch is None or getattr(getattr(torch, "__spec__", None), "_initializing", False):
        return None
    return torch


def gpu_memory() -> list[dict]:
    """Per-GPU total/free/allocated, only when torch is already loaded (never imported for this)."""
    torch = loaded_torch()
    if torch is None or not torch.cuda.is_available():
        return []
    report = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        report.append({
            "index": i,
            "name": torch.cuda.get_device_name(i),
            "total_bytes": total,
            "free_bytes": free,
            "allocated_bytes": torch.cuda.memory_allocated(i),
        })
    return report


def gpu_used_bytes() -> int:
    """Memory in use on every GPU (total - free, as the driver reports it), when torch is already loaded.

    A load's footprint is the process RSS it adds plus this: weights on a GPU are not in the RSS.
    """
    torch = loaded_torch()
    try:
        if torch is None or not torch.cuda.is_available():
            return 0
        used = 0
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            used += total - free
        return used
    except Exception:
        return 0


def process_rss() -> int:
    return psutil.Process().memory_info().rss


def memory_report() -> dict:
    vm = psutil.virtual_memory()
    return {
        "process_rss_bytes": process_rss(),
        "system_total_bytes": vm.total,
        "system_available_bytes": vm.available,
        "gpus": gpu_memory(),
    }


def release_memory() -> None:
    """Give freed memory back: collect cycles, empty device caches, trim the C heap."""
    gc.collect()
    torch = loaded_torch()
    if torch is not None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            mps.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
