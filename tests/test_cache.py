"""The model cache: keep_alive, memory budget with LRU eviction, one load per key, real unloads."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading

import pytest

from universal_kernel import LoadFailed, MemoryBudgetExceeded, Runtime, RuntimeConfig

from .conftest import MINILM, SMOLLM


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


def make_runtime(tmp_path, clock=None, **config):
    config.setdefault("keep_alive", 300)
    kwargs = {"clock": clock} if clock else {}
    return Runtime(RuntimeConfig(model_folders=[tmp_path], **config), reaper=False, **kwargs)


def loaded_ids(rt):
    return sorted((e.spec.id, dict(e.key[2]).get("n_ctx") or 0) for e in rt.cache.entries())


def test_keep_alive_expires_idle_models(tmp_path, clock):
    rt = make_runtime(tmp_path, clock)
    try:
        rt.load(MINILM, keep_alive=10)
        assert rt.status()["models"][0]["expires_in_s"] == 10
        clock.now += 9
        assert rt.cache.sweep() == [] and loaded_ids(rt) == [(MINILM, 0)]
        rt.embed(["touch"], MINILM)  # use restarts the idle timer
        clock.now += 9
        assert rt.cache.sweep() == []
        clock.now += 2
        assert [e.spec.id for e in rt.cache.sweep()] == [MINILM] and rt.cache.entries() == []
    finally:
        rt.close()


def test_keep_alive_zero_unloads_after_the_request_and_negative_keeps_forever(tmp_path, clock):
    rt = make_runtime(tmp_path, clock)
    try:
        rt.embed(["once"], MINILM, keep_alive=0)
        assert rt.cache.entries() == []
        rt.embed(["forever"], MINILM, keep_alive=-1)
        clock.now += 10**9
        assert rt.cache.sweep() == [] and rt.status()["models"][0]["expires_in_s"] is None
    finally:
        rt.close()


def test_no_unload_while_a_request_runs(tmp_path, clock):
    rt = make_runtime(tmp_path, clock)
    try:
        stream = rt.stream(SMOLLM, prompt="Once upon a time", params={"temperature": 0, "max_tokens": 48},
                           keep_alive=1)
        next(stream)
        clock.now += 100
        assert rt.cache.sweep() == []
        assert rt.unload(SMOLLM) == ["scheduled"]  # an explicit unload waits for the request too
        assert len(list(stream)) > 0 and stream.completion is not None  # the generation finished whole
        assert rt.cache.entries() == []
    finally:
        rt.close()


def test_the_idle_timer_thread_unloads_on_time(tmp_path):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path]))
    try:
        rt.load(MINILM, keep_alive=0.5)
        for _ in range(50):
            if not rt.cache.entries():
                break
            threading.Event().wait(0.1)
        assert rt.cache.entries() == []
    finally:
        rt.close()


def test_budget_evicts_the_least_recently_used_idle_model(tmp_path, clock, smollm_path, minilm_path):
    gguf = smollm_path.stat().st_size
    rt = make_runtime(tmp_path, clock, memory_budget=2 * gguf + 1024)
    try:
        rt.load(SMOLLM, n_ctx=512)
        clock.now += 1
        rt.load(SMOLLM, n_ctx=1024)
        clock.now += 1
        rt.generate(SMOLLM, prompt="Hi", params={"max_tokens": 1})  # n_ctx=None: a third key
        assert rt.cache.evictions == 1 and loaded_ids(rt) == [(SMOLLM, 0), (SMOLLM, 1024)]
        clock.now += 1
        rt.load(SMOLLM, n_ctx=1024)  # touch: now n_ctx=None is the least recently used
        clock.now += 1
        rt.load(MINILM)
        assert loaded_ids(rt) == [(MINILM, 0), (SMOLLM, 1024)]
        assert rt.cache.evictions == 2
    finally:
        rt.close()


def test_a_load_that_cannot_fit_fails_and_harms_nothing(tmp_path, clock, smollm_path):
    gguf = smollm_path.stat().st_size
    rt = make_runtime(tmp_path, clock, memory_budget=gguf + 1024)
    try:
        with pytest.raises(MemoryBudgetExceeded):
            rt.load(SMOLLM, backend="transformers")  # dequantised it needs far more than the budget
        assert rt.cache.entries() == []
        stream = rt.stream(SMOLLM, prompt="Once upon a time", params={"temperature": 0, "max_tokens": 48})
        next(stream)  # the only model is busy, so it cannot be evicted
        with pytest.raises(MemoryBudgetExceeded, match="in use"):
            rt.load(MINILM)
        assert loaded_ids(rt) == [(SMOLLM, 0)]
        assert stream.result().text  # the running request was not harmed
        assert rt.cache.loads == 1
    finally:
        rt.close()


def test_two_threads_asking_for_one_model_load_it_once(tmp_path):
    rt = make_runtime(tmp_path)
    barrier = threading.Barrier(3)
    results, errors = [], []

    def ask():
        barrier.wait()
        try:
            results.append(rt.embed(["same model"], MINILM).vectors)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [] and len(results) == 3
        assert rt.cache.loads == 1
    finally:
        rt.close()


def _write_broken_gguf(path):
    """A valid GGUF header that says llama but holds no tensors: detection works, loading fails."""
    def string(s):
        data = s.encode()
        return struct.pack("<Q", len(data)) + data

    kv = string("general.architecture") + struct.pack("<I", 8) + string("llama")
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv)


def test_a_failed_load_leaves_no_entry_and_a_clear_error(tmp_path):
    _write_broken_gguf(tmp_path / "broken.gguf")
    rt = make_runtime(tmp_path)
    try:
        assert rt.resolve("broken.gguf").architecture == "llama"
        with pytest.raises(LoadFailed, match="broken.gguf"):
            rt.load("broken.gguf")
        assert rt.cache.entries() == [] and rt.cache.loads == 0 and rt.cache.used_bytes() == 0
        rt.load(MINILM)  # the runtime is still fine
        assert loaded_ids(rt) == [(MINILM, 0)]
    finally:
        rt.close()


RSS_PROBE = textwrap.dedent("""
    import json, sys
    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.devices import process_rss, release_memory
    model, backend = sys.argv[1], sys.argv[2]
    rt = Runtime(RuntimeConfig(keep_alive=-1), reaper=False)
    rows = []
    for cycle in range(2):  # the first cycle also pays the libraries' one-time start-up
        release_memory()
        before = process_rss()
        rt.load(model, backend=backend)
        if rt.resolve(model).task == "embed":
            rt.embed(["warm up the model %d" % cycle] * 8, model)
        else:
            rt.generate(model, prompt="Hello", params={"max_tokens": 4}, backend=backend)
        loaded = process_rss()
        rt.unload(model)
        rows.append([before, loaded, process_rss()])
    print(json.dumps(rows))
""")


@pytest.mark.parametrize("model,backend", [(SMOLLM, "llama_cpp"), (MINILM, "transformers")])
def test_unloading_returns_rss_near_its_level_before_the_load(model, backend, smollm_path, minilm_path):
    import json

    out = subprocess.run([sys.executable, "-c", RSS_PROBE, model, backend], capture_output=True, text=True,
                         timeout=300, check=True)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    before, loaded, after = rows[-1]
    grew = loaded - before
    assert grew > 20 * 2**20, rows  # the load was real
    assert after - before < max(0.1 * grew, 16 * 2**20), rows
