"""Precision per device for encoders: bf16 only where the CPU has it (or where asked), behind a probe
whose refusal keeps fp32; the choice and its reason in the status. Real model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel import InvalidRequest, Runtime, RuntimeConfig
from universal_kernel.devices import pick_device
from universal_kernel.precision import candidate, cpu_has_bf16
from universal_kernel.tasks.embed import precision_option

from .conftest import MINILM
from .magics_support import ip  # noqa: F401

TEXTS = ["a sentence to embed", "another, somewhat longer sentence about the weather in Lyon"]


def status_of(runtime, model_id=MINILM) -> dict:
    return next(m for m in runtime.status()["models"] if m["id"] == model_id)


def test_the_candidate_follows_the_cpu_flags():
    cpu = pick_device("cpu")
    zen4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    zen1 = frozenset({"avx2", "fma"})
    assert cpu_has_bf16(zen4) and cpu_has_bf16(frozenset({"amx_bf16"})) and not cpu_has_bf16(zen1)
    assert candidate(cpu, "auto", zen4).autocast and candidate(cpu, "auto", zen4).name == "bf16"
    assert candidate(cpu, "auto", zen1).name == "fp32" and "no AVX512_BF16" in candidate(cpu, "auto", zen1).reason
    assert candidate(cpu, "fp32", zen4).name == "fp32" and not candidate(cpu, "fp32", zen4).autocast
    assert candidate(cpu, "bf16", zen1).autocast  # asked for: tried anywhere, behind the probe


def test_auto_on_this_cpu_and_the_status_says_why(runtime):
    minilm = status_of(runtime)
    if cpu_has_bf16():
        assert minilm["precision"] in ("bf16", "fp32") and "probe" in minilm["precision_reason"]
    else:
        assert minilm["precision"] == "fp32" and "no AVX512_BF16" in minilm["precision_reason"]
    from universal_kernel.magics.runtime_magic import RuntimeStatus

    shown = repr(RuntimeStatus(runtime.status()))
    assert "precision:" in shown and f"{MINILM}: {minilm['precision']}, {minilm['precision_reason']}" in shown
    assert "Q4_1" in shown  # the GGUF's stored type, in the precision column
    # fp32 asked for where auto is fp32 anyway: the same instance, no second load
    assert precision_option("fp32") == ({"precision": "fp32"} if cpu_has_bf16() else {})
    assert precision_option("auto") == {}
    with pytest.raises(InvalidRequest):
        precision_option("fp8")


def test_bf16_behind_the_probe_and_its_refusal(tmp_path):
    passing = Runtime(RuntimeConfig(model_folders=[tmp_path], embedding_cache_folder=None))
    refusing = Runtime(RuntimeConfig(model_folders=[tmp_path], embedding_cache_folder=None,
                                     precision_min_cosine=1.01))  # no row can pass: the refusal path
    try:
        fp32 = passing.embed(TEXTS, MINILM, precision="fp32").vectors
        bf16 = passing.embed(TEXTS, MINILM, precision="bf16")
        kinds = {m.get("precision") for m in passing.status()["models"]}
        assert "bf16" in kinds, passing.status()["models"]
        bf16_model = next(m for m in passing.status()["models"] if m["precision"] == "bf16")
        assert "probe: every row within cosine" in bf16_model["precision_reason"]
        assert ((bf16.vectors * fp32).sum(axis=1) >= 0.9999).all()
        assert not np.array_equal(bf16.vectors, fp32)  # it really ran in bf16

        refused = refusing.embed(TEXTS, MINILM, precision="bf16").vectors
        model = status_of(refusing)
        assert model["precision"] == "fp32" and "the probe refused bf16" in model["precision_reason"]
        assert np.allclose(refused, fp32, atol=1e-6)
    finally:
        passing.close()
        refusing.close()


def test_embed_magic_precision_option(ip):
    vectors = ip.run_line_magic("embed", f"{TEXTS!r} --precision fp32")
    assert vectors.shape == (2, 384)
    from IPython.core.error import UsageError

    with pytest.raises(UsageError):
        ip.run_line_magic("embed", f"{TEXTS!r} --precision fp8")

