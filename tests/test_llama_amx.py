"""The AMX guard (universal_kernel/backends/llama_amx.py): on a CPU with AMX, llama.cpp loads weights into
plain CPU buffers, because llama-cpp-python's AMX buffers crash its first decode there; elsewhere the
library's defaults stay. Both branches run on every machine through the capability seam."""

from __future__ import annotations

from universal_kernel.backends.llama_cpp import llama_library
from universal_kernel.machine import CPU_FLAGS_ENV, cpu_has_amx


def test_the_guard_follows_the_cpu(monkeypatch):
    llama_cpp = llama_library()
    defaults = llama_cpp.llama_cpp.llama_model_default_params
    library_default = defaults.original().use_extra_bufts
    assert library_default is True  # what the guard changes: llama.cpp's own default
    monkeypatch.setenv(CPU_FLAGS_ENV, "+amx_int8")
    assert cpu_has_amx() and defaults().use_extra_bufts is False
    assert llama_cpp.llama_model_default_params().use_extra_bufts is False  # the name `Llama` reads too
    monkeypatch.setenv(CPU_FLAGS_ENV, "-amx_int8")
    assert not cpu_has_amx() and defaults().use_extra_bufts is True
    llama_library()  # a second import wraps nothing twice
    assert llama_cpp.llama_cpp.llama_model_default_params is defaults


def test_a_raw_llama_beside_the_runtime_loads_as_the_runtimes_models(runtime, raw_llama):
    entry = next(e for e in runtime.cache.entries() if e.spec.id == "smollm2-135m-instruct")
    assert raw_llama.model_params.use_extra_bufts == entry.backend.llm.model_params.use_extra_bufts
    assert raw_llama.model_params.use_extra_bufts is (not cpu_has_amx())
    assert raw_llama.create_completion("Once upon a time", max_tokens=4, temperature=0)["choices"][0]["text"]
