"""How libgomp's threads wait between llama.cpp's operations: set before llama.cpp (or torch) loads it.

llama.cpp's CPU backend computes each operation on an OpenMP team and meets at an OpenMP barrier after
every one, hundreds of times a token. Every Python thread that runs llama.cpp gets a team of its own
(each model's worker thread; the notebook's own `llama_cpp.Llama` on the main thread), and once libgomp
manages more threads than there are CPUs it "throttles": with no `OMP_WAIT_POLICY` a waiting thread spins
100 times and then sleeps on a futex, so every barrier costs a wake-up. Measured on an Intel Xeon (2 cores,
AVX-512, threads=2), SmolLM2 decoding on one thread after another thread had generated: 15-30 tok/s,
against 72-80 tok/s once that thread's team was gone; `OMP_WAIT_POLICY=passive` gives 29 tok/s always.
`ACTIVE` makes the throttled spin 1,000, which keeps full speed (70-79 tok/s). `GOMP_SPINCOUNT` keeps the
spin after a parallel region at libgomp's own default (300,000 spins, a few ms) instead of ACTIVE's five
minutes, so an idle runtime uses no CPU.

libgomp reads these once, when it is loaded: a process that imported llama_cpp (or torch) before
universal_kernel keeps libgomp's defaults. A user's own settings always win.
"""

from __future__ import annotations

import os
import sys
import warnings

WAIT_POLICY = "ACTIVE"
SPIN_COUNT = "300000"


def apply() -> bool:
    """Set the wait policy for libgomp unless the user set one; True if it was set here."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    if "llama_cpp" in sys.modules:
        warnings.warn("llama_cpp was imported before universal_kernel, so its OpenMP threads keep libgomp's "
                      "default wait policy: llama.cpp can decode several times slower when more than one "
                      "thread runs it. Import universal_kernel first, or set OMP_WAIT_POLICY=ACTIVE and "
                      "GOMP_SPINCOUNT=300000 before starting Python.", RuntimeWarning, stacklevel=3)
    return True
