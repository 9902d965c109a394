"""universal_kernel sets how libgomp's threads wait before llama.cpp loads it (openmp_policy.py), and never
overrides a user's own setting. Each case is a fresh interpreter: libgomp reads the settings once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SHOW = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return subprocess.run([sys.executable, "-W", "always::RuntimeWarning", "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True, timeout=120)


def test_importing_universal_kernel_sets_the_wait_policy_before_llama_cpp_loads_libgomp():
    before = _python("import universal_kernel; print('libgomp' in open('/proc/self/maps').read())")
    assert before.stdout.strip() == "False"  # so libgomp reads the settings when llama_cpp loads it
    out = _python("import universal_kernel, llama_cpp; " + SHOW)
    assert json.loads(out.stdout) == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}
    assert "RuntimeWarning" not in out.stderr


def test_a_users_own_setting_wins():
    out = _python("import universal_kernel; " + SHOW, OMP_WAIT_POLICY="passive")
    assert json.loads(out.stdout) == {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": None}
    out = _python("import universal_kernel; " + SHOW, GOMP_SPINCOUNT="0")
    assert json.loads(out.stdout) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "0"}


def test_llama_cpp_imported_first_is_warned_about():
    out = _python("import llama_cpp, universal_kernel")
    assert "RuntimeWarning" in out.stderr and "Import universal_kernel first" in out.stderr
