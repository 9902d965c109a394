"""A model whose worker thread died is replaced: its requests end at once with a 503-shaped error, the model
leaves the cache, the next request loads it again and answers as before, and the status (and the monitor)
say what happened and when.

The worker is killed for real: an exception is raised into its thread (CPython's
`PyThreadState_SetAsyncExc`, what a bug escaping the worker's loop amounts to) while it decodes two streams
and a third waits in its queue.
"""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.errors import WorkerLost
from universal_kernel.wire import ERRORS

from .conftest import MINILM, SMOLLM, wait_for

GREEDY = {"temperature": 0, "max_tokens": 12}
STORY = "Write a very long story about a lighthouse keeper and the storms of one winter."


class WorkerKilled(BaseException):
    """Raised into a worker's thread: nothing in the worker catches it (a BaseException, as a bug's would be)."""


def kill_thread(thread: threading.Thread) -> None:
    """Raise WorkerKilled in `thread` at its next Python bytecode."""
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerKilled))
    assert hit == 1, f"the exception reached {hit} threads"


@pytest.fixture(scope="module")
def own_runtime(smollm_path, minilm_path, tmp_path_factory):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path_factory.mktemp("models")], keep_alive=-1, stream_poll_s=0.2,
                               precision="fp32", parallel=2), reaper=False)
    yield rt
    rt.close()


def _entry(rt: Runtime, model: str):
    return next((e for e in rt.cache.entries() if e.spec.id == model), None)


def test_a_worker_killed_under_load_is_replaced_on_the_next_request(own_runtime):
    rt = own_runtime
    before = rt.generate(SMOLLM, prompt="The capital of France is", params=GREEDY).text
    entry = _entry(rt, SMOLLM)
    loads = rt.cache.loads
    streams = [rt.stream(SMOLLM, messages=[{"role": "user", "content": STORY}],
                         params={"temperature": 0.8, "seed": i, "max_tokens": 2000}) for i in range(3)]
    errors: list[BaseException] = []
    texts: list[str] = []

    def read(stream):
        try:
            for _ in stream:
                pass
            texts.append(stream.text)
        except BaseException as exc:  # noqa: BLE001 - the test asserts what it was
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in streams]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(len(s.parts) >= 4 for s in streams[:2]) and entry.worker.queue_depth == 3, 120,
             lambda: f"two streams did not begin beside a queued one: {[len(s.parts) for s in streams]}")
    killed_at = time.time()
    kill_thread(entry.worker.thread)
    for reader in readers:
        reader.join(timeout=120)
    assert not any(r.is_alive() for r in readers), "a reader still waits on the dead worker"

    # each stream ends with the worker's death, which the server sends as a 503 the client may retry
    assert texts == [] and len(errors) == 3, (texts, errors)
    for error in errors:
        assert isinstance(error, WorkerLost), repr(error)
        assert "died" in error.message and "WorkerKilled" in error.message and "loads it again" in error.message
    row = next(row for row in ERRORS if isinstance(errors[0], row.error))
    assert (row.status, row.retry) == (503, True)

    # the model left the cache (its backend closed); the status says what happened and when
    assert entry.closed and entry.backend is None and not entry.worker.thread.is_alive()
    assert _entry(rt, SMOLLM) is None
    [record] = rt.status()["worker_failures"]
    assert record["model"] == SMOLLM and "WorkerKilled" in record["error"]
    assert killed_at <= record["died_at"] <= time.time()
    assert record["requests_failed"] == 3 and record["reloaded_at"] is None

    # the next request loads it again and answers as before
    after = rt.generate(SMOLLM, prompt="The capital of France is", params=GREEDY).text
    assert after == before
    assert rt.cache.loads == loads + 1 and _entry(rt, SMOLLM) is not entry
    [record] = rt.status()["worker_failures"]
    assert record["died_at"] <= record["reloaded_at"] <= time.time()


def test_a_failed_reload_after_a_death_is_a_503_and_the_one_after_loads(own_runtime):
    rt = own_runtime
    before = rt.embed(["a lighthouse in a storm"], MINILM, cache=False).vectors
    entry = _entry(rt, MINILM)
    failed: list[BaseException] = []

    def embed_a_batch():  # the worker dies while it embeds (an idle one waits in C, where nothing reaches it)
        try:
            rt.embed([f"row {i} of a batch long enough to be killed in" for i in range(2000)], MINILM, cache=False)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failed.append(exc)

    batch = threading.Thread(target=embed_a_batch, daemon=True)
    batch.start()
    wait_for(lambda: entry.worker.running is not None, 60, "the batch did not start")
    kill_thread(entry.worker.thread)
    batch.join(timeout=120)
    assert len(failed) == 1 and isinstance(failed[0], WorkerLost), failed
    assert _entry(rt, MINILM) is None

    real_load = rt.cache._load
    rt.cache._load = lambda spec, backend, options: (_ for _ in ()).throw(OSError("the disk is gone"))
    try:
        with pytest.raises(WorkerLost, match=r"died at \d\d:\d\d:\d\d .*loading it again failed.*the disk is gone"):
            rt.embed(["a lighthouse in a storm"], MINILM, cache=False)
    finally:
        rt.cache._load = real_load
    record = rt.status()["worker_failures"][-1]
    assert record["model"] == MINILM and "the disk is gone" in record["reload_error"]
    assert record["reloaded_at"] is None

    again = rt.embed(["a lighthouse in a storm"], MINILM, cache=False).vectors
    assert (again == before).all() or abs(again - before).max() < 1e-5
    assert rt.status()["worker_failures"][-1]["reloaded_at"] is not None


def test_the_monitor_shows_the_death_and_the_reload(own_runtime):
    from widgets.monitor import Monitor

    monitor = Monitor(own_runtime, autostart=False)
    try:
        text = monitor._failures.value
        assert f"worker of {SMOLLM} died at" in text and "WorkerKilled" in text and "loaded again at" in text
        assert f"worker of {MINILM} died at" in text
    finally:
        monitor.close()
