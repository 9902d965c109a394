"""CUDA paths. They skip where no GPU is present; run them on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel import Runtime, RuntimeConfig

from .conftest import FRANCE, MINILM, SMOLLM

torch = pytest.importorskip("torch")
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
    out = gpu_runtime.generate(SMOLLM, messages=[{"role": "user", "content": FRANCE}],
                               params={"temperature": 0, "max_tokens": 24}, backend="transformers")
    assert "Paris" in out.text
    assert gpu_runtime.status()["models"][0]["device"] == "cuda:0"


def test_llama_cpp_offloads_when_built_with_cuda(gpu_runtime):
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has no GPU offload")
    gpu_runtime.load(SMOLLM)
    assert gpu_runtime.status()["models"][0]["device"] == "gpu"
    out = gpu_runtime.generate(SMOLLM, messages=[{"role": "user", "content": FRANCE}],
                               params={"temperature": 0, "max_tokens": 24})
    assert "Paris" in out.text
    assert np.isfinite(out.stats.tokens_per_s)
