"""The memory budget holds on measured bytes: a loaded model takes 2-4x its file.

Every budget here is derived from footprints measured in this process (how much a load adds to RSS depends
on the allocator and the CPU's kernels, so no test assumes a ratio to the file), or from what the project
computes itself: the KV cache of a context, from the GGUF's metadata.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from universal_kernel import MemoryBudgetExceeded, Runtime, RuntimeConfig
from universal_kernel.wire import wire_error

from .conftest import MINILM, SMOLLM

GREEDY = {"temperature": 0, "max_tokens": 48}


def make_runtime(tmp_path, budget):
    # one sequence: the footprints' proportions below assume SmolLM2's KV cache of one 4096-token context
    return Runtime(RuntimeConfig(model_folders=[tmp_path], keep_alive=-1, memory_budget=budget, parallel=1),
                   reaper=False)


def loaded(rt):
    return sorted((e.spec.id, dict(e.key[2]).get("n_ctx") or 0) for e in rt.cache.entries())


def use(rt, model):
    """What the model answers: greedy text for SmolLM2, vectors for MiniLM."""
    if model == MINILM:
        return rt.embed(["a model kept under a budget"], MINILM).vectors
    return rt.generate(SMOLLM, prompt="Once upon a time", params=GREEDY).text


@pytest.fixture(scope="module")
def footprints(smollm_path, minilm_path, tmp_path_factory):
    """Bytes each model takes once loaded on this machine: loaded once each under no budget."""
    rt = make_runtime(tmp_path_factory.mktemp("models"), None)
    try:
        rt.load(SMOLLM)
        rt.load(MINILM)
        status = {m["id"]: m for m in rt.status()["models"]}
        result = {}
        for model in (SMOLLM, MINILM):
            m = status[model]
            print(f"{model}: file {m['size_bytes']:,} bytes, measured {m['measured_bytes']:,}, "
                  f"counted {m['footprint_bytes']:,}")
            assert m["footprint_bytes"] >= max(m["measured_bytes"], m["size_bytes"]), m  # at least the file
            # the least a later load of this kind is counted at (the figure this process learned)
            result[model] = max(m["footprint_bytes"], rt.cache.estimate(rt.resolve(model), m["backend"], {}))
        return result
    finally:
        rt.close()


@pytest.fixture(scope="module")
def short_smollm(footprints, tmp_path_factory):
    """What a SmolLM2 of a quarter of the context is counted at: its KV cache comes from the file's metadata."""
    rt = make_runtime(tmp_path_factory.mktemp("models"), None)
    try:
        estimate = rt.cache.estimate(rt.resolve(SMOLLM), "llama_cpp", {"n_ctx": 1024})
    finally:
        rt.close()
    kv_4096 = 30 * 3 * 128 * 2 * 4096  # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) f16 numbers a cell
    assert footprints[SMOLLM] - estimate >= 0.75 * kv_4096 * 0.99  # three quarters of its KV cache fewer
    return estimate


def one_at_a_time(footprints) -> int:
    """A budget with room for either model, never for both, whatever each measured."""
    return max(footprints.values()) + min(footprints.values()) // 2


def test_a_budget_for_one_model_evicts_the_idle_one_for_the_other(tmp_path, footprints):
    budget = one_at_a_time(footprints)
    rt = make_runtime(tmp_path, budget)
    try:
        rt.load(SMOLLM)
        assert loaded(rt) == [(SMOLLM, 0)]
        use(rt, MINILM)  # SmolLM2 is idle: it goes
        assert loaded(rt) == [(MINILM, 0)] and rt.cache.evictions == 1
        status = rt.status()
        share = status["budget"]
        assert share["budget_bytes"] == budget == status["budget_bytes"]
        assert share["used_bytes"] == status["used_bytes"] <= budget
        (model,) = share["models"]
        assert model["id"] == MINILM and model["footprint_bytes"] == share["used_bytes"]
        assert model["footprint_bytes"] >= max(model["measured_bytes"], model["size_bytes"])
        assert model["fraction"] == pytest.approx(model["footprint_bytes"] / budget)
        assert status["models"][0]["budget_fraction"] == pytest.approx(model["fraction"])
        use(rt, SMOLLM)  # and back
        assert loaded(rt) == [(SMOLLM, 0)] and rt.cache.evictions == 2 and rt.cache.loads == 3
    finally:
        rt.close()


def test_the_least_recently_used_idle_model_goes_first(tmp_path, footprints, short_smollm):
    smol, mini, smol_1024 = footprints[SMOLLM], footprints[MINILM], short_smollm
    # SmolLM2 with either MiniLM or the short SmolLM2, never all three
    budget = smol + max(mini, smol_1024) + min(mini, smol_1024) // 2
    rt = make_runtime(tmp_path, budget)
    try:
        rt.load(SMOLLM)
        rt.load(MINILM)
        use(rt, SMOLLM)  # now MiniLM is the least recently used, though SmolLM2 was loaded first
        rt.load(SMOLLM, n_ctx=1024)  # a second SmolLM2 entry
        assert loaded(rt) == [(SMOLLM, 0), (SMOLLM, 1024)] and rt.cache.evictions == 1
        assert rt.status()["budget"]["used_bytes"] <= budget
    finally:
        rt.close()


def test_a_model_larger_than_the_budget_is_refused_and_nothing_loaded_is_harmed(tmp_path, footprints):
    small_id, small, big_id = MINILM, footprints[MINILM], SMOLLM
    rt = make_runtime(tmp_path, None)
    try:  # a SmolLM2 whose KV cache (from its metadata) alone takes twice MiniLM: larger, on any machine
        kv_cell = rt.cache.estimate(rt.resolve(SMOLLM), "llama_cpp", {"n_ctx": 2048}) - \
            rt.cache.estimate(rt.resolve(SMOLLM), "llama_cpp", {"n_ctx": 1024})
        big_ctx = 1024 * (1 + 2 * small // kv_cell)
        big = rt.cache.estimate(rt.resolve(SMOLLM), "llama_cpp", {"n_ctx": big_ctx})
    finally:
        rt.close()
    assert big > 2 * small, (small, big)
    rt = make_runtime(tmp_path, (small + big) // 2)
    try:
        before = use(rt, small_id)
        with pytest.raises(MemoryBudgetExceeded, match="cannot be loaded") as refused:
            rt.load(big_id, n_ctx=big_ctx)
        assert big_id in str(refused.value) and "MiB" in str(refused.value)
        assert wire_error(refused.value)[1:4] == (507, "server_error", "memory_budget_exceeded")  # over HTTP
        # refused before loading, and the idle model was not evicted for a load that could never fit
        assert loaded(rt) == [(small_id, 0)] and rt.cache.loads == 1 and rt.cache.evictions == 0
        after = use(rt, small_id)
        assert np.array_equal(before, after) if small_id == MINILM else before == after
    finally:
        rt.close()
    rt = make_runtime(tmp_path, None)
    smallest_file = min(rt.resolve(model).size_bytes for model in (SMOLLM, MINILM))
    rt.close()
    rt = make_runtime(tmp_path, smallest_file // 2)  # smaller than any model's file: nothing can fit
    try:
        for model in (SMOLLM, MINILM):
            with pytest.raises(MemoryBudgetExceeded, match="the memory budget is"):
                use(rt, model)
        assert rt.cache.entries() == [] and rt.cache.loads == 0 and rt.status()["budget"]["used_bytes"] == 0
    finally:
        rt.close()


def test_a_model_busy_streaming_is_not_evicted(tmp_path, footprints):
    budget = one_at_a_time(footprints)  # MiniLM fits only if SmolLM2 goes
    rt = make_runtime(tmp_path, budget)
    try:
        stream = rt.stream(SMOLLM, prompt="Once upon a time", params=GREEDY)
        first = next(stream)
        with pytest.raises(MemoryBudgetExceeded, match="in use") as refused:
            rt.load(MINILM)
        assert SMOLLM in str(refused.value) and MINILM in str(refused.value)
        assert loaded(rt) == [(SMOLLM, 0)] and rt.cache.loads == 1
        streamed = first + "".join(stream)
        assert stream.completion is not None and stream.completion.text == streamed
        assert streamed == use(rt, SMOLLM)  # the stream ended whole: the same text as an undisturbed run
        rt.load(MINILM)  # idle now, SmolLM2 may go
        assert loaded(rt) == [(MINILM, 0)] and rt.cache.evictions == 1
    finally:
        rt.close()


AFTER_LOAD = textwrap.dedent("""
    import json
    from universal_kernel import MemoryBudgetExceeded, Runtime, RuntimeConfig
    rt = Runtime(RuntimeConfig(keep_alive=-1, parallel=1), reaper=False)
    rt.load("smollm2-135m-instruct", n_ctx=128)  # a small context: about 1.3x its file
    small = rt.status()["models"][0]["footprint_bytes"]
    # room for MiniLM's file and not a byte more: MiniLM loaded (weights, tokenizer, buffers) takes more
    rt.cache.memory_budget = small + rt.resolve("all-minilm-l6-v2").size_bytes
    try:
        rt.load("all-minilm-l6-v2")  # no factor learned for its kind yet: loaded, measured, then unloaded
        error = None
    except MemoryBudgetExceeded as exc:
        error = str(exc)
    (entry,) = rt.cache.entries()
    tokens = entry.backend.count_tokens("Hello there")  # the model already loaded still works
    print(json.dumps({"small": small, "budget": rt.cache.memory_budget, "error": error, "loads": rt.cache.loads,
                      "file": rt.resolve("all-minilm-l6-v2").size_bytes,
                      "loaded": [e.spec.id for e in rt.cache.entries()], "used": rt.cache.used_bytes(),
                      "tokens": tokens}))
""")


def test_a_load_measured_over_the_budget_is_unloaded_and_the_rest_kept(smollm_path, minilm_path):
    """A default factor is only a guess: the measured bytes decide. A fresh process, which knows no factor."""
    out = subprocess.run([sys.executable, "-c", AFTER_LOAD], capture_output=True, text=True, timeout=300,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is not None and "measured" in result["error"], result
    assert result["file"] <= result["budget"], result  # the guess let it load
    assert result["loaded"] == ["smollm2-135m-instruct"] and result["loads"] == 1, result  # MiniLM went again
    assert result["used"] == result["small"] <= result["budget"], result
    assert result["tokens"] > 0


def test_a_context_too_large_for_the_budget_is_refused_before_loading(tmp_path, footprints):
    """The KV cache comes from the file's metadata: a context that cannot fit never loads."""
    budget = int(footprints[SMOLLM] * 1.5)
    rt = make_runtime(tmp_path, budget)
    try:
        rt.load(SMOLLM)
        with pytest.raises(MemoryBudgetExceeded, match="of context") as refused:
            rt.load(SMOLLM, n_ctx=8192 * 4)  # four times the model's context: a KV cache of 720 MiB
        assert "cannot be loaded" in str(refused.value)
        assert loaded(rt) == [(SMOLLM, 0)] and rt.cache.loads == 1 and rt.cache.evictions == 0
    finally:
        rt.close()


def test_two_loads_at_once_never_overrun_the_budget_together(tmp_path, footprints):
    import threading

    budget = one_at_a_time(footprints)
    rt = make_runtime(tmp_path, budget)
    barrier = threading.Barrier(2)
    outcomes = {}

    def load(model):
        barrier.wait()
        try:
            rt.load(model)
            outcomes[model] = "loaded"
        except MemoryBudgetExceeded as exc:
            outcomes[model] = str(exc)

    try:
        threads = [threading.Thread(target=load, args=(m,)) for m in (SMOLLM, MINILM)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert "loaded" in outcomes.values() and len(outcomes) == 2, outcomes
        assert len(rt.cache.entries()) == 1 and rt.cache.used_bytes() <= budget, outcomes
        assert rt.cache.loading_bytes() == 0
    finally:
        rt.close()


FRESH_FOOTPRINTS = textwrap.dedent("""
    import json, tempfile
    from universal_kernel import Runtime, RuntimeConfig
    from universal_kernel.config import SERVER_PARALLEL  # the server's slots (a kernel's default is 1)
    rt = Runtime(RuntimeConfig(model_folders=[tempfile.mkdtemp()], keep_alive=-1, parallel=SERVER_PARALLEL),
                 reaper=False)
    for model in ("smollm2-135m-instruct", "all-minilm-l6-v2"):
        rt.load(model)
    print(json.dumps({m["id"]: m["footprint_bytes"] for m in rt.status()["models"]}))
    rt.close()
""")


def test_the_server_keeps_its_budget_and_answers_507(tmp_path, smollm_path, minilm_path):
    """The issue's case through `jupyter server`: a fresh process, whose first loads know no factor yet."""
    import os
    import time

    import requests

    from .conftest import TOKEN, Server, _free_port, stop_process

    # What each model takes in a fresh process like the server's (this long test process has freed and
    # reused memory, so its own measurements are no guide for another process).
    out = subprocess.run([sys.executable, "-c", FRESH_FOOTPRINTS], capture_output=True, text=True, timeout=300,
                         check=True)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    # SmolLM2 with the server's 4 slots counts a KV cache of 4 x 4096 cells (377 MiB, from its metadata)
    # besides its file: the larger of the two on any machine
    (small_id, small), (big_id, big) = (MINILM, fresh[MINILM]), (SMOLLM, fresh[SMOLLM])
    assert big > small, fresh
    budget = (small + big) // 2
    port = _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}",
               "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
               f"--UniversalKernelApp.memory_budget={budget}", "--UniversalKernelApp.keep_alive=-1",
               "--UniversalKernelApp.threads=1"]
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    server = Server(port, process, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, server.log_tail()
            try:
                server.status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.3)

        def ask(model):
            if model == MINILM:
                return server.post("universal/v1/embeddings", {"model": MINILM, "input": ["budget"]})
            return server.post("universal/v1/completions", {"model": SMOLLM, "prompt": "Hi", "max_tokens": 1})

        assert ask(small_id).status_code == 200
        refused = ask(big_id)  # measured over the budget once loaded, beside nothing it may evict
        assert refused.status_code == 507, refused.text
        error = refused.json()["error"]
        assert error["code"] == "memory_budget_exceeded" and error["type"] == "server_error"
        assert big_id in error["message"] and "budget" in error["message"]
        # its KV cache is known from the file before loading: refused up front
        assert "of context" in error["message"] and "cannot be loaded" in error["message"]
        status = server.status()
        assert [m["id"] for m in status["models"]] == [small_id]  # the loaded model was not harmed
        assert status["budget"]["budget_bytes"] == budget >= status["budget"]["used_bytes"]
        assert ask(small_id).status_code == 200
    finally:
        stop_process(process)
