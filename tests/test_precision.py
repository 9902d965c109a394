"""Precision per device for encoders: bf16 only where the CPU has it (or where asked), behind a probe
whose refusal keeps fp32; the choice and its reason in the status. Real model (all-MiniLM-L6-v2).

Every machine runs both branches: the CPU acts as one with AVX512_BF16/AMX and as one without through
the capability seam (universal_kernel/machine.py, `UNIVERSAL_KERNEL_CPU_FLAGS`). One test needs the real
hardware and says so (`bf16_hardware`)."""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel import InvalidRequest, Runtime, RuntimeConfig
from universal_kernel.devices import pick_device
from universal_kernel.machine import CPU_FLAGS_ENV, apply_override, cpu_acts_as, cpu_flags, hardware_cpu_flags
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


def test_the_seam_masks_adds_or_replaces_the_cpus_flags(monkeypatch):
    zen4 = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    assert apply_override(zen4, None) == zen4 and apply_override(zen4, " ") == zen4
    assert apply_override(zen4, "-avx512_bf16,-amx_bf16") == {"avx2", "avx512f"}
    assert apply_override(frozenset({"avx2"}), "+avx512_bf16") == {"avx2", "avx512_bf16"}
    assert apply_override(zen4, "avx2 fma") == {"avx2", "fma"}
    with pytest.raises(InvalidRequest, match="mixes flags"):
        apply_override(zen4, "avx2 -fma")
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    assert cpu_flags() == hardware_cpu_flags()
    for bf16 in (True, False):
        with cpu_acts_as(bf16=bf16):
            assert cpu_has_bf16() is bf16
            assert cpu_flags() - {"avx512_bf16", "amx_bf16"} == hardware_cpu_flags() - {"avx512_bf16", "amx_bf16"}
            assert candidate(pick_device("cpu"), "auto").autocast is bf16
        assert CPU_FLAGS_ENV not in __import__("os").environ  # the block leaves the environment as it was


@pytest.mark.parametrize("cpu", ["bf16-cpu", "no-bf16-cpu"])
def test_auto_follows_the_cpu_and_the_status_says_why(tmp_path, cpu):
    with cpu_acts_as(bf16=cpu == "bf16-cpu"):
        runtime = Runtime(RuntimeConfig(model_folders=[tmp_path], embedding_cache_folder=None))
        try:
            vectors = runtime.embed(TEXTS, MINILM).vectors
            fp32 = runtime.embed(TEXTS, MINILM, precision="fp32").vectors
            minilm = next(m for m in runtime.status()["models"]
                          if m["id"] == MINILM and m["precision_reason"] != "fp32 asked for")
            if cpu == "bf16-cpu":
                assert minilm["precision_reason"].startswith("the CPU has AVX512_BF16/AMX")
                assert (minilm["precision"] == "bf16" and "probe: every row within cosine" in minilm["precision_reason"]) or (
                    minilm["precision"] == "fp32" and "the probe refused bf16" in minilm["precision_reason"])
                # fp32 asked for where auto may be bf16: a second instance, in fp32
                assert precision_option("fp32") == {"precision": "fp32"}
                assert len(runtime.status()["models"]) == 2
                assert ((vectors * fp32).sum(axis=1) >= 0.9999).all()
            else:
                assert minilm["precision"] == "fp32" and minilm["precision_reason"] == "the CPU has no AVX512_BF16 or AMX"
                # fp32 asked for where auto is fp32 anyway: the same instance, no second load
                assert precision_option("fp32") == {}
                assert len(runtime.status()["models"]) == 1
                assert np.array_equal(vectors, fp32)
            from universal_kernel.magics.runtime_magic import RuntimeStatus

            shown = repr(RuntimeStatus(runtime.status()))
            assert "precision:" in shown and f"{MINILM}: {minilm['precision']}, {minilm['precision_reason']}" in shown
        finally:
            runtime.close()
    assert precision_option("auto") == {}
    with pytest.raises(InvalidRequest):
        precision_option("fp8")


def test_the_status_shows_a_gguf_files_stored_type(runtime):
    from universal_kernel.magics.runtime_magic import RuntimeStatus

    assert "Q4_1" in repr(RuntimeStatus(runtime.status()))  # the GGUF's stored type, in the precision column


@pytest.mark.bf16_hardware
@pytest.mark.skipif(not cpu_has_bf16(hardware_cpu_flags()), reason="needs bf16 hardware (AVX512_BF16 or AMX)")
def test_on_real_bf16_hardware_auto_takes_the_bf16_path(tmp_path, monkeypatch):
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    runtime = Runtime(RuntimeConfig(model_folders=[tmp_path], embedding_cache_folder=None))
    try:
        fp32 = runtime.embed(TEXTS, MINILM, precision="fp32").vectors
        auto = runtime.embed(TEXTS, MINILM).vectors
        minilm = next(m for m in runtime.status()["models"] if m["id"] == MINILM and m["precision_reason"]
                      .startswith("the CPU has AVX512_BF16/AMX"))
        assert "probe" in minilm["precision_reason"]
        if minilm["precision"] == "bf16":  # native bf16 kernels: close to fp32, and not equal to it
            assert not np.array_equal(auto, fp32) and ((auto * fp32).sum(axis=1) >= 0.9999).all()
        else:
            assert np.array_equal(auto, fp32)
    finally:
        runtime.close()


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

