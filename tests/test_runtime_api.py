"""status(), the memory report, devices, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from universal_kernel import InvalidRequest
from universal_kernel.devices import Device, memory_report, pick_device

from .conftest import MINILM, SMOLLM


def test_status_reports_models_memory_and_figures(runtime, smollm_path):
    requests = next(m for m in runtime.status()["models"] if m["id"] == SMOLLM)["figures"]["requests"]
    runtime.generate(SMOLLM, prompt="Hi", params={"max_tokens": 3, "temperature": 0})
    runtime.embed(["status probe"], MINILM)
    status = runtime.status()
    by_id = {m["id"]: m for m in status["models"]}
    smol, mini = by_id[SMOLLM], by_id[MINILM]
    assert smol["backend"] == "llama_cpp" and mini["backend"] == "transformers"
    assert smol["size_bytes"] == Path(smollm_path).stat().st_size  # the file on disk
    assert smol["queue_depth"] == 0 and smol["running"] is False
    assert smol["expires_in_s"] is None  # keep_alive=-1 in the session runtime
    figures = smol["figures"]
    assert figures["requests"] == requests + 1  # counted before generate() returned
    assert figures["median_ttft_s"] > 0 and figures["median_tokens_per_s"] > 0
    last = figures["last"]
    assert last["completion_tokens"] == 3 and last["prompt_tokens"] > 0 and last["total_s"] >= last["ttft_s"]
    memory = status["memory"]
    assert 0 < memory["process_rss_bytes"] <= memory["system_total_bytes"]
    assert 0 < memory["system_available_bytes"] <= memory["system_total_bytes"]
    assert isinstance(memory["gpus"], list)
    assert status["recent"][-1]["kind"] == "embed"


def test_models_lists_servable_models_with_loaded_state(runtime):
    listed = {m["id"]: m for m in runtime.models()}
    assert listed[SMOLLM]["loaded"] and listed[SMOLLM]["task"] == "generate"
    assert listed[MINILM]["loaded"] and listed[MINILM]["task"] == "embed"


def test_device_choice_and_override(monkeypatch):
    assert pick_device("cpu") == Device("cpu")
    monkeypatch.setenv("UNIVERSAL_KERNEL_DEVICE", "cpu")
    assert pick_device("auto") == Device("cpu")
    monkeypatch.setenv("UNIVERSAL_KERNEL_DEVICE", "tpu")
    with pytest.raises(InvalidRequest):
        pick_device("auto")
    monkeypatch.delenv("UNIVERSAL_KERNEL_DEVICE")
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device("auto").kind == expected


def test_memory_report_has_the_process_and_the_system():
    report = memory_report()
    assert set(report) >= {"process_rss_bytes", "system_available_bytes", "system_total_bytes", "gpus"}


def test_importing_the_package_loads_no_heavy_library():
    code = (
        "import sys; import universal_kernel; "
        "from universal_kernel import get_runtime; rt = get_runtime(); rt.resolve('smollm2-135m-instruct'); "
        "print([m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
