"""The model cache: keep_alive, one load per key, real unloads, files that change on disk, unwritable caches."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from universal_kernel import LoadFailed, ModelNotFound, Runtime, RuntimeConfig

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
        assert rt.unload(SMOLLM)["results"] == ["scheduled"]  # an explicit unload waits for the request too
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


# The memory budget (measured bytes, LRU eviction, refusals, models in use) is tested in test_memory_budget.py.


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


UNLOAD_PROBE = textwrap.dedent("""
    import gc, json, sys, weakref
    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.devices import process_rss, release_memory
    model, backend = sys.argv[1], sys.argv[2]
    rt = Runtime(RuntimeConfig(keep_alive=-1), reaper=False)
    rows = []
    for cycle in range(2):  # the first cycle also pays the libraries' one-time start-up
        release_memory()
        before = process_rss()
        rt.load(model, backend=backend)
        entry = next(e for e in rt.cache.entries() if e.spec.id == model)
        # what holds the weights: llama-cpp-python's Llama (its C model), or the torch module
        weights = weakref.ref(entry.backend.llm if backend == "llama_cpp" else entry.backend.model)
        del entry
        if rt.resolve(model).task == "embed":
            rt.embed(["warm up the model %d" % cycle] * 8, model)
        else:
            rt.generate(model, prompt="Hello", params={"max_tokens": 4}, backend=backend)
        loaded = process_rss()
        rt.unload(model)
        gc.collect()
        rows.append({"freed": weights() is None, "rss_before": before, "rss_loaded": loaded,
                     "rss_after": process_rss()})
    print(json.dumps(rows))
""")


@pytest.mark.parametrize("model,backend", [(SMOLLM, "llama_cpp"), (MINILM, "transformers")])
def test_unloading_frees_the_models_weights(model, backend, smollm_path, minilm_path):
    """Nothing of the runtime holds an unloaded model's weights: the objects that own them are gone.

    What RSS does then is the allocator's (glibc keeps freed arenas, a CPU's kernels differ): measured and
    reported, never asserted (run with -s to see it).
    """
    import json

    out = subprocess.run([sys.executable, "-c", UNLOAD_PROBE, model, backend], capture_output=True, text=True,
                         timeout=600, check=True)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    for row in rows:
        mib = {key: f"{value / 2**20:.0f} MiB" for key, value in row.items() if key.startswith("rss_")}
        print(f"{model} on {backend}: {mib}")
    assert [row["freed"] for row in rows] == [True, True], rows


def _replace_file(source, target):
    """Write a new file at `target` as a user would replace a model: beside it, then renamed over it."""
    import os
    import shutil

    fresh = target.with_name(target.name + ".new")
    shutil.copyfile(source, fresh)
    old = target.stat().st_mtime_ns
    os.utime(fresh, ns=(old + 10**10, old + 10**10))  # a new mtime, even on a coarse clock
    os.replace(fresh, target)


def test_a_model_file_replaced_or_removed_on_disk_is_never_served_stale(tmp_path, smollm_path):
    import shutil

    model = tmp_path / "mine.gguf"
    shutil.copyfile(smollm_path, model)
    rt = make_runtime(tmp_path)
    greedy = {"temperature": 0, "max_tokens": 24}
    try:
        reference = rt.generate("mine.gguf", prompt="Once upon a time", params=greedy).text
        (old,) = rt.cache.entries()
        stream = rt.stream("mine.gguf", prompt="Once upon a time", params=greedy)
        first = next(stream)  # a request on the old file runs while the file is replaced
        _replace_file(smollm_path, model)
        assert rt.generate("mine.gguf", prompt="Once upon a time", params=greedy).text == reference
        assert rt.cache.loads == 2  # the new file was loaded, not the old entry served
        (new,) = rt.cache.entries()
        assert new is not old and new.spec.key != old.spec.key
        assert first + "".join(stream) == reference  # the running request finished on the old model
        for _ in range(100):  # the worker releases the model just after the reader saw the last piece
            if old.backend is None:
                break
            threading.Event().wait(0.05)
        assert old.backend is None  # and the old model was unloaded once it was done
        assert rt.status()["budget"]["used_bytes"] == new.footprint_bytes
        rt.generate("mine.gguf", prompt="Hi", params={"max_tokens": 1})
        assert rt.cache.loads == 2  # an unchanged file is not loaded again

        model.unlink()
        with pytest.raises(ModelNotFound, match="mine.gguf"):
            rt.generate("mine.gguf", prompt="Hi", params={"max_tokens": 1})
        assert rt.cache.entries() == [] and new.backend is None  # the removed file's model is gone too
    finally:
        rt.close()


def test_a_removed_model_folder_is_a_clear_error(tmp_path, minilm_path):
    import shutil

    folder = tmp_path / "mini"
    shutil.copytree(minilm_path, folder)
    rt = make_runtime(tmp_path)
    try:
        rt.embed(["here"], "mini")
        shutil.rmtree(folder)
        with pytest.raises(ModelNotFound, match="mini"):
            rt.embed(["gone"], "mini")
        assert rt.cache.entries() == []
    finally:
        rt.close()


def _tiny_causal_lm(minilm_path):
    """A small random causal LM and a real tokenizer: enough to save and read converted weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config), AutoTokenizer.from_pretrained(minilm_path)


def test_an_unwritable_convert_cache_is_one_warning_and_no_partial_folder(tmp_path, minilm_path):
    import warnings

    from transformers import AutoModelForCausalLM

    from universal_kernel.backends.transformers_lm import keep_converted

    model, tokenizer = _tiny_causal_lm(minilm_path)
    # written where it can be: it is kept and reads back
    assert keep_converted(model, tokenizer, tmp_path / "ok" / "tiny-0123") is True
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "ok" / "tiny-0123").config.hidden_size == 16
    # a cache folder under a regular file cannot be created (tests run as root, where chmod blocks nothing)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert keep_converted(model, tokenizer, blocker / "converted" / "tiny-0123") is False
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert "not kept" in messages[0] and "without the cache" in messages[0]
    assert blocker.read_text().startswith("a file")


def test_a_full_disk_under_the_convert_cache_leaves_no_half_written_folder(tmp_path, minilm_path):
    """RLIMIT_FSIZE makes writes past a size fail with EFBIG, as a full disk fails them (ENOSPC)."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, warnings
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.test_cache import _tiny_causal_lm
        from universal_kernel.backends.transformers_lm import keep_converted
        model, tokenizer = _tiny_causal_lm({str(minilm_path)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        folder = Path({str(tmp_path)!r}) / "converted" / "tiny-0123"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = keep_converted(model, tokenizer, folder)
        print(kept, len(caught), sorted(p.name for p in folder.parent.iterdir()), str(caught[0].message))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kept, count, left, message = out.stdout.strip().split(" ", 3)
    assert (kept, count, left) == ("False", "1", "[]"), out.stdout
    assert "File too large" in message or "Errno 27" in message, message
