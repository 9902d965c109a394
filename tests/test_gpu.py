"""CUDA paths. They skip where no GPU is present; run them on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universal_kernel import Runtime, RuntimeConfig

from .conftest import FRANCE, MINILM, SMOLLM
from .test_generation_llama import raw_chat
from .test_generation_transformers import raw_transformers

# The tiny model's greedy text depends on the device's kernels (SPEC §6): each test compares the
# runtime with the raw library on the same GPU, never with an answer written here.
CHAT = [{"role": "user", "content": FRANCE}]

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def gpu_runtime(tmp_path):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], device="cuda", convert_cache=tmp_path / "conv"),
                 reaper=False)
    yield rt
    rt.close()


def test_embeddings_on_cuda_use_a_half_dtype_and_match_the_cpu(gpu_runtime, runtime):
    gpu = gpu_runtime.embed(["A GPU sentence.", "Another one, longer than the first."], MINILM).vectors
    cpu = runtime.embed(["A GPU sentence.", "Another one, longer than the first."], MINILM).vectors
    status = gpu_runtime.status()
    assert status["models"][0]["device"] == "cuda:0"
    entry = gpu_runtime.cache.entries()[0]
    assert next(entry.backend.model.parameters()).dtype in (torch.bfloat16, torch.float16)
    assert ((gpu * cpu).sum(1)).min() > 0.995
    gpus = status["memory"]["gpus"]
    assert gpus and gpus[0]["allocated_bytes"] > 0


def test_unloading_frees_gpu_memory(gpu_runtime):
    before = torch.cuda.memory_allocated()
    gpu_runtime.load(MINILM)
    assert torch.cuda.memory_allocated() > before
    gpu_runtime.unload(MINILM)
    assert torch.cuda.memory_allocated() - before < 2**20


def test_transformers_generation_on_cuda(gpu_runtime):
    out = gpu_runtime.generate(SMOLLM, messages=CHAT, params={"temperature": 0, "max_tokens": 24},
                               backend="transformers")
    assert gpu_runtime.status()["models"][0]["device"] == "cuda:0"
    entry = gpu_runtime.cache.entries()[0]
    text, prompt_tokens, completion_tokens, ended = raw_transformers(entry.backend, CHAT, 24)  # same weights
    assert out.text and out.text == text
    assert (out.prompt_tokens, out.completion_tokens) == (prompt_tokens, completion_tokens)
    assert out.finish_reason == ("stop" if ended else "length")


def test_llama_cpp_offloads_when_built_with_cuda(gpu_runtime):
    from universal_kernel.backends.llama_cpp import llama_library

    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    # On a machine with CUDA, a CPU-only llama-cpp-python is a broken install, not a reason to skip.
    assert llama_cpp.llama_supports_gpu_offload(), (
        "this machine has CUDA but llama-cpp-python was built without GPU offload: reinstall it with "
        'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python')
    gpu_runtime.load(SMOLLM)
    assert gpu_runtime.status()["models"][0]["device"] == "gpu"
    out = gpu_runtime.generate(SMOLLM, messages=CHAT, params={"temperature": 0, "max_tokens": 24})
    assert np.isfinite(out.stats.tokens_per_s)
    backend = gpu_runtime.cache.entries()[0].backend
    raw_llama = llama_cpp.Llama(**backend.library_settings(), verbose=False)
    try:
        raw = raw_chat(raw_llama, CHAT, temperature=0.0, max_tokens=24)
    finally:
        raw_llama.close()
    assert out.text and out.text == raw["choices"][0]["message"]["content"]
    assert out.finish_reason == raw["choices"][0]["finish_reason"]
    assert (out.prompt_tokens, out.completion_tokens) == (raw["usage"]["prompt_tokens"],
                                                           raw["usage"]["completion_tokens"])
