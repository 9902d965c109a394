"""What the runtime reads from the machine's CPU, through one seam that tests (and users) can set.

The CPU decides a path that only some machines take: bf16 autocast on a CPU with AVX512_BF16 or AMX,
fp32 elsewhere (precision.py). So that every machine runs both branches, the flags the runtime sees
are the CPU's own, changed by `UNIVERSAL_KERNEL_CPU_FLAGS`, a space- or comma-separated list:
- `-avx512_bf16 -amx_bf16` masks flags (a bf16 CPU acts as one without);
- `+avx512_bf16` adds a flag (an AVX2 CPU acts as a bf16 one: torch then emulates bf16, slower but
  with the same numbers' kind, which is what a test of the choice needs);
- a list without signs replaces the CPU's flags whole.
An environment variable rather than a function argument, so that a server or a kernel that a test starts
in another process sees the same machine as the test. `hardware_cpu_flags()` always tells the truth:
a test that needs real bf16 hardware asks it, never the seam.

The device (CUDA, MPS, CPU) has its own override, `UNIVERSAL_KERNEL_DEVICE` (devices.py).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

CPU_FLAGS_ENV = "UNIVERSAL_KERNEL_CPU_FLAGS"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def hardware_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
    """The flags the CPU itself reports (Linux: `flags`; ARM: `Features`), read once."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def apply_override(flags: frozenset, override: str | None) -> frozenset:
    """`flags` as `override` (the value of UNIVERSAL_KERNEL_CPU_FLAGS) changes them."""
    words = (override or "").replace(",", " ").split()
    if not words:
        return flags
    if not any(w[0] in "+-" for w in words):
        return frozenset(words)
    if not all(w[0] in "+-" for w in words):
        from .errors import InvalidRequest

        raise InvalidRequest(f"{CPU_FLAGS_ENV}={override!r} mixes flags with and without +/-: write either a "
                             "whole list, or only +FLAG / -FLAG changes", param=CPU_FLAGS_ENV)
    added = {w[1:] for w in words if w[0] == "+"}
    removed = {w[1:] for w in words if w[0] == "-"}
    return frozenset((set(flags) | added) - removed)


def cpu_flags() -> frozenset:
    """The flags every runtime decision reads: the CPU's own as the seam changes them."""
    return apply_override(hardware_cpu_flags(), os.environ.get(CPU_FLAGS_ENV))


def cpu_has_bf16(flags: frozenset | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in BF16_FLAGS)


def cpu_has_amx(flags: frozenset | None = None) -> bool:
    """Intel AMX tiles for int8 (Sapphire Rapids and later): llama.cpp's AMX weight buffers (llama_amx.py)."""
    flags = cpu_flags() if flags is None else flags
    return "amx_int8" in flags


@contextmanager
def cpu_acts_as(*, bf16: bool):
    """Within the block (this process and the processes it starts), the CPU has bf16 or has none."""
    sign = "+" if bf16 else "-"
    change = " ".join(sign + flag for flag in (BF16_FLAGS[:1] if bf16 else BF16_FLAGS))
    previous = os.environ.get(CPU_FLAGS_ENV)
    os.environ[CPU_FLAGS_ENV] = change
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CPU_FLAGS_ENV, None)
        else:
            os.environ[CPU_FLAGS_ENV] = previous
