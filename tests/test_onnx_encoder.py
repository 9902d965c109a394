"""Encoders on ONNX Runtime (backends/onnx_encoder.py): all-MiniLM-L6-v2 exported once with torch.onnx,
run by ONNX Runtime, checked against sentence-transformers and against torch fp32 by the load's probe.

The export cache of this module lives in its own folder; the first test's load exports into it, the others
reuse it (one export per module, except where a test corrupts or refuses it on purpose)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.backends import onnx_export
from universal_kernel.backends.onnx_encoder import OnnxEncoderBackend
from universal_kernel.errors import InvalidRequest
from universal_kernel.machine import cpu_acts_as
from universal_kernel.references import Resolver

from .conftest import MINILM, SMOLLM

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Quarterly revenue rose 4.2% to EUR 93.1 million.",
    "ok",
    "Ein kurzer deutscher Satz über das Wetter in München.",
    "def add(a, b):\n    return a + b",
    "東京は日本の首都です。",
    " ".join(["A long paragraph that runs past the model's window, repeated to fill it."] * 40),
    "The quick brown fox jumps over the lazy dog.",  # a duplicate: one row computed, both returned
]


@pytest.fixture(scope="module")
def convert_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-convert")


@pytest.fixture(scope="module")
def onnx_runtime(convert_cache, tmp_path_factory):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path_factory.mktemp("models")], keep_alive=-1,
                               convert_cache=convert_cache, embedding_cache_folder=None), reaper=False)
    rt.load(MINILM, backend="onnx")
    yield rt
    rt.close()


def _minilm_status(rt, engine=None):
    return next(m for m in rt.status()["models"] if m["id"] == MINILM and engine in (None, m["engine"]))


def test_onnx_vectors_match_sentence_transformers(onnx_runtime, minilm_path):
    from sentence_transformers import SentenceTransformer

    result = onnx_runtime.embed(TEXTS, MINILM, backend="onnx")
    peer = SentenceTransformer(str(minilm_path), device="cpu").encode(TEXTS, normalize_embeddings=True)
    cosines = (result.vectors * peer).sum(axis=1)
    assert result.vectors.shape == peer.shape and (cosines >= 0.9999).all(), cosines
    assert np.array_equal(result.vectors[0], result.vectors[-1])
    status = _minilm_status(onnx_runtime)
    assert status["backend"] == "onnx" and status["engine"] == "onnx" and status["precision"] == "fp32"
    assert status["precision_reason"].startswith("ONNX Runtime fp32 (backend='onnx' asked for)")
    assert "probe: every row within cosine" in status["precision_reason"]
    from universal_kernel.magics.runtime_magic import RuntimeStatus

    assert f"{MINILM}: fp32, ONNX Runtime fp32" in repr(RuntimeStatus(onnx_runtime.status()))


_FRESH_PROCESS = """
import json, os, sys
from pathlib import Path
from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.backends import onnx_export
rt = Runtime(RuntimeConfig(model_folders=[Path(sys.argv[2])], convert_cache=Path(sys.argv[1]),
                           embedding_cache_folder=None), reaper=False)
vectors = rt.embed(json.loads(sys.argv[3]), "all-minilm-l6-v2", backend="onnx").vectors
status = next(m for m in rt.status()["models"] if m["id"] == "all-minilm-l6-v2")
print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                  "exports": onnx_export.exports_run, "reason": status["precision_reason"],
                  "vectors": vectors.tolist()}))
rt.close()
"""


def test_the_export_survives_a_new_process_which_imports_no_torch(onnx_runtime, convert_cache, minilm_path,
                                                                  tmp_path):
    model_file = onnx_export.export_folder(minilm_path, convert_cache) / "model.onnx"
    stamp = model_file.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(convert_cache), str(tmp_path),
                           json.dumps(TEXTS)], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["exports"] == 0 and "cached export" in seen["reason"]
    assert seen["torch"] is False and seen["transformers"] is False
    assert model_file.stat().st_mtime_ns == stamp  # read, not written again
    here = onnx_runtime.embed(TEXTS, MINILM, backend="onnx").vectors
    assert ((np.asarray(seen["vectors"], dtype=np.float32) * here).sum(axis=1) >= 0.9999999).all()


def test_a_corrupt_export_is_refused_and_exported_again(onnx_runtime, convert_cache, minilm_path):
    spec = Resolver([minilm_path.parent]).resolve(str(minilm_path))
    model_file = onnx_export.export_folder(minilm_path, convert_cache) / "model.onnx"
    size = model_file.stat().st_size
    with open(model_file, "r+b") as f:  # same size, so only opening it (or the probe) can tell
        f.seek(size // 3)
        f.write(os.urandom(1 << 16))
        f.seek(0)
        f.write(b"\xff" * 64)
    before = onnx_export.exports_run
    backend = OnnxEncoderBackend(spec, threads=2, convert_cache=convert_cache)
    try:
        assert onnx_export.exports_run == before + 1 and "fresh export" in backend.precision.reason
        assert onnx_export.cached_export(minilm_path, convert_cache) is not None
        vectors = backend.embed(TEXTS)[0]
        reference = onnx_runtime.embed(TEXTS, MINILM, backend="onnx").vectors
        assert ((vectors * reference).sum(axis=1) >= 0.9999999).all()
    finally:
        backend.close()
    # a truncated file is refused before it is opened: its size is not the recorded one
    with open(model_file, "r+b") as f:
        f.truncate(size // 2)
    assert onnx_export.cached_export(minilm_path, convert_cache) is None


def test_the_probes_refusal_falls_back_to_torch_with_the_reason(tmp_path):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], convert_cache=tmp_path / "convert", keep_alive=-1,
                               embedding_cache_folder=None, precision_min_cosine=1.01), reaper=False)
    try:
        vectors = rt.embed(TEXTS, MINILM, backend="onnx").vectors
        status = _minilm_status(rt)
        assert status["backend"] == "onnx" and status["engine"] == "transformers"
        assert status["precision_reason"].startswith("ONNX Runtime refused (the probe refused ONNX Runtime: a row at")
        assert "torch serves it" in status["precision_reason"]
        assert vectors.shape == (len(TEXTS), 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        # the refused export is not left behind for the next load
        assert onnx_export.cached_export(_minilm_path(rt), tmp_path / "convert") is None
    finally:
        rt.close()


def _minilm_path(rt):
    return next(e.spec.path for e in rt.cache.entries() if e.spec.id == MINILM)


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_onnx_serves_on_both_kinds_of_cpu_and_auto_stays_torch(bf16, convert_cache, tmp_path):
    with cpu_acts_as(bf16=bf16):
        rt = Runtime(RuntimeConfig(model_folders=[tmp_path], convert_cache=convert_cache, keep_alive=-1,
                                   embedding_cache_folder=None), reaper=False)
        try:
            onnx = rt.embed(TEXTS[:3], MINILM, backend="onnx").vectors
            auto = rt.embed(TEXTS[:3], MINILM).vectors
            assert _minilm_status(rt, "onnx")["precision"] == "fp32"
            torch_side = _minilm_status(rt, "transformers")
            assert torch_side["precision"] == ("bf16" if bf16 and "probe: every" in torch_side["precision_reason"]
                                               else "fp32")
            assert ((onnx * auto).sum(axis=1) >= 0.9999).all()
        finally:
            rt.close()


def test_the_onnx_backend_serves_encoder_embedding_folders_only(onnx_runtime):
    with pytest.raises(InvalidRequest, match="onnx backend serves"):
        onnx_runtime.load(SMOLLM, backend="onnx")
