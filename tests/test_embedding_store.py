"""The embedding cache on disk: it survives a new process, takes two writers at once, keeps to its cap,
drops a corrupt entry, and never serves one setting's vector for another's. Real model (all-MiniLM-L6-v2),
real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.tasks.embedding_store import CorruptEntry, EmbeddingStore, decode, encode, text_key

from .conftest import MINILM, SHARED_PRECISION

TEXTS = [f"the disk cache keeps sentence number {i}" for i in range(12)]


def child(folder, texts: list[str], code: str = "", precision: str = "auto") -> dict:
    """Embed `texts` in a new Python process with the disk cache in `folder`; its counts and vectors."""
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from universal_kernel import Runtime, RuntimeConfig
        runtime = Runtime(RuntimeConfig(embedding_cache_folder={str(folder)!r}, keep_alive=-1,
                                        precision={precision!r}))
        result = runtime.embed({texts!r}, {MINILM!r})
        {code}
        json.dump({{"computed": result.stats.rows_computed, "cached": result.stats.rows_cached,
                   "vectors": result.vectors.tolist()}}, sys.stdout)
        runtime.close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    return json.loads(done.stdout)


def test_vectors_survive_a_new_process_and_match_a_fresh_computation(tmp_path, runtime):
    first = child(tmp_path, TEXTS, precision=SHARED_PRECISION)  # as the session runtime they are compared with
    second = child(tmp_path, TEXTS, precision=SHARED_PRECISION)
    assert (first["computed"], first["cached"]) == (len(TEXTS), 0)
    assert (second["computed"], second["cached"]) == (0, len(TEXTS))
    assert np.array_equal(np.array(first["vectors"], dtype=np.float32), np.array(second["vectors"], dtype=np.float32))
    fresh = runtime.embed(TEXTS, MINILM, cache=False)  # the session runtime, no cache at all
    assert fresh.stats.rows_computed == len(TEXTS) and fresh.stats.rows_cached == 0
    assert np.allclose(fresh.vectors, np.array(second["vectors"], dtype=np.float32), atol=1e-6)


def test_two_processes_write_at_once(tmp_path):
    a = [f"writer a row {i}" for i in range(40)]
    b = [f"writer b row {i}" for i in range(40)]
    shared = [f"both write row {i}" for i in range(20)]
    scripts = []
    for texts in (a + shared, shared + b):
        scripts.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                from universal_kernel import Runtime, RuntimeConfig
                runtime = Runtime(RuntimeConfig(embedding_cache_folder={str(tmp_path)!r}))
                for start in range(0, 60, 5):  # many small writes, so the two processes interleave
                    runtime.embed({texts!r}[start:start + 5], {MINILM!r})
                runtime.close()
            """)], stderr=subprocess.PIPE, text=True))
    for process in scripts:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    after = child(tmp_path, a + shared + b)
    assert (after["computed"], after["cached"]) == (0, 100)
    runtime = Runtime(RuntimeConfig(embedding_cache_folder=None))
    try:
        fresh = runtime.embed(a + shared + b, MINILM).vectors
    finally:
        runtime.close()
    assert np.allclose(fresh, np.array(after["vectors"], dtype=np.float32), atol=1e-6)


def test_eviction_keeps_to_the_cap_least_recently_used_first(tmp_path):
    store = EmbeddingStore(tmp_path, size_limit=200_000)
    row = encode(np.ones(384, dtype=np.float32), 5)
    scope = "s" * 32
    store.put_many(scope, {"kept warm": (np.ones(384, dtype=np.float32), 5)})
    for i in range(600):  # 600 rows of about 1.6 KB: five times the cap
        store.put_many(scope, {f"row {i}": (np.full(384, i, dtype=np.float32), 5)})
        if i % 20 == 0:
            assert store.get_many(scope, ["kept warm"])  # used all along: never the least recent
    values = [key for key in store.cache.iterkeys() if isinstance(key, str) and key.startswith(scope)]
    assert len(values) * len(row) <= store.size_limit
    assert len(values) < 600 and store.cache.volume() <= store.size_limit * 1.5
    assert store.get_many(scope, ["kept warm"]) and not store.get_many(scope, ["row 0"])
    assert store.get_many(scope, ["row 599"])


def test_a_corrupt_entry_is_dropped_with_a_warning_and_computed_again(tmp_path):
    config = RuntimeConfig(embedding_cache_folder=tmp_path, keep_alive=-1)
    runtime = Runtime(config)
    try:
        good = runtime.embed(TEXTS[:3], MINILM).vectors
        store = runtime.embedding_store
        keys = [k for k in store.cache.iterkeys() if isinstance(k, str) and ":" in k]
        assert len(keys) == 3
        value = bytearray(store.cache.get(keys[0]))
        value[-1] ^= 0xFF  # one flipped byte in the vector
        store.cache.set(keys[0], bytes(value))
        assert decode(bytes(value)) is None and decode(b"junk") is None
        runtime.embedding_cache._rows.clear()  # a new kernel: nothing in memory
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = runtime.embed(TEXTS[:3], MINILM)
        assert any(issubclass(w.category, CorruptEntry) for w in caught)
        assert (again.stats.rows_computed, again.stats.rows_cached) == (1, 2)
        assert np.allclose(again.vectors, good, atol=1e-6)
        assert decode(store.cache.get(keys[0])) is not None  # written again, whole
    finally:
        runtime.close()


def test_other_settings_never_get_another_settings_vector(tmp_path, minilm_path):
    runtime = Runtime(RuntimeConfig(embedding_cache_folder=tmp_path, keep_alive=-1))
    try:
        normalised = runtime.embed(TEXTS[:4], MINILM)
        runtime.embedding_cache._rows.clear()
        raw = runtime.embed(TEXTS[:4], MINILM, normalize=False)
        assert raw.stats.rows_computed == 4  # normalisation is part of the key
        assert not np.allclose(np.linalg.norm(raw.vectors, axis=1), 1.0, atol=1e-3)
        assert np.allclose(np.linalg.norm(normalised.vectors, axis=1), 1.0, atol=1e-5)
        store = runtime.embedding_store
        spec = runtime.resolve(MINILM)
        base = {"pooling": "mean", "max_length": 256, "dimensions": 384, "dtype": "torch.float32"}
        scopes = {store.scope(spec, base, True), store.scope(spec, base, False),
                  store.scope(spec, {**base, "pooling": "cls"}, True),
                  store.scope(spec, {**base, "dtype": "torch.bfloat16"}, True),
                  store.scope(spec, {**base, "max_length": 128}, True)}
        assert len(scopes) == 5
        assert text_key("a", "text") != text_key("b", "text") != text_key("a", "other")
    finally:
        runtime.close()


def test_a_copied_model_with_other_weights_has_another_fingerprint(tmp_path, minilm_path):
    import shutil

    copy = tmp_path / "models" / "minilm-copy"
    shutil.copytree(minilm_path, copy)
    store = EmbeddingStore(tmp_path / "cache")
    runtime = Runtime(RuntimeConfig(model_folders=[tmp_path / "models"], embedding_cache_folder=None))
    original, copied = runtime.resolve(MINILM), runtime.resolve(str(copy))
    assert store.fingerprint(original) == store.fingerprint(copied)  # same bytes, same model
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert store.fingerprint(runtime.resolve(str(copy))) != store.fingerprint(original)


def test_no_cache_and_the_switch(tmp_path):
    runtime = Runtime(RuntimeConfig(embedding_cache_folder=tmp_path, keep_alive=-1))
    try:
        runtime.embed(TEXTS[:2], MINILM)
        uncached = runtime.embed(TEXTS[:2], MINILM, cache=False)
        assert (uncached.stats.rows_computed, uncached.stats.rows_cached) == (2, 0)
    finally:
        runtime.close()
    off = Runtime(RuntimeConfig(embedding_cache_folder=None))
    assert off.embedding_store is None
    off.close()


@pytest.mark.parametrize("value, expected", [("off", None), ("", None), ("/tmp/uk-embeddings", "/tmp/uk-embeddings")])
def test_the_environment_switch(monkeypatch, value, expected):
    monkeypatch.setenv("UNIVERSAL_KERNEL_EMBEDDING_CACHE", value)
    folder = RuntimeConfig().embedding_cache_folder
    assert (None if folder is None else str(folder)) == expected
