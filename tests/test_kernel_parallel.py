"""A kernel runs one cell at a time: its runtime decodes one generation stream (a KV cache of one context),
the server keeps 4 for its many clients, and UNIVERSAL_KERNEL_PARALLEL sets both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import SMOLLM, start_server, stop_process

#: a kernel's process: the runtime the magics use (get_runtime), SmolLM2 loaded, what its status says
KERNEL = f"""
import json
from universal_kernel.runtime import get_runtime

rt = get_runtime()
rt.load({SMOLLM!r})
model = next(m for m in rt.status()["models"] if m["id"] == {SMOLLM!r})
print(json.dumps({{"config": rt.config.parallel, "parallel": model["parallel"]}}))
rt.close()
"""


def kernel_parallel(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "UNIVERSAL_KERNEL_PARALLEL"}
    if env_value is not None:
        env["UNIVERSAL_KERNEL_PARALLEL"] = env_value
    done = subprocess.run([sys.executable, "-c", KERNEL], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def server_parallel(folder, env_value: str | None) -> int:
    def loaded(status):
        return next((m for m in status["models"] if m["id"] == SMOLLM), None)

    env = {"UNIVERSAL_KERNEL_PARALLEL": env_value} if env_value is not None else None
    srv = start_server(folder, f'--UniversalKernelApp.preload=["{SMOLLM}"]', env=env, ready=loaded)
    try:
        return loaded(srv.status())["parallel"]
    finally:
        stop_process(srv.process)


def test_a_kernel_decodes_one_stream_by_default(smollm_path):
    assert kernel_parallel(None) == {"config": 1, "parallel": 1}


def test_the_server_keeps_four_streams_by_default(smollm_path, tmp_path):
    assert "UNIVERSAL_KERNEL_PARALLEL" not in os.environ  # conftest clears the user's settings
    assert server_parallel(tmp_path, None) == 4


def test_the_environment_variable_sets_both(smollm_path, tmp_path):
    # 3: neither default, so the value seen can only have come from the variable
    assert kernel_parallel("3") == {"config": 3, "parallel": 3}
    assert server_parallel(tmp_path, "3") == 3
