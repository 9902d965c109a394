"""The worker's bookkeeping is done before a reader gets a request's last message: a client that asks for
the status as soon as it has its answer must not find its request still running or its figures missing."""

from __future__ import annotations

import threading
import time

import pytest

from universal_kernel.errors import GenerationFailed
from universal_kernel.scheduler import ModelWorker, Request
from universal_kernel.stats import RequestStats


def _work(result):
    def work(backend, emit, cancelled):
        emit("a")
        if isinstance(result, Exception):
            raise result
        return result

    return work


@pytest.mark.parametrize("result", ["an outcome", ValueError("a backend bug")], ids=["done", "error"])
def test_a_request_has_left_the_worker_when_its_reader_gets_the_last_message(result):
    counted: list[Request] = []
    done: list[Request] = []
    worker = ModelWorker("model", backend=None, queue_length=4, on_finished=counted.append, on_done=done.append)
    seen: list[tuple] = []
    arrived = threading.Event()

    def sink(message):
        if message[0] != "text":  # what a reader could see on its last message
            seen.append((message[0], type(message[1]), list(worker.active), list(counted)))
            arrived.set()

    request = Request(work=_work(result), sink=sink, stats=RequestStats("model", "test", "generate", time.time()))
    try:
        worker.submit(request)
        assert arrived.wait(5) and request.finished.wait(5)
    finally:
        worker.stop()
    kind = "error" if isinstance(result, Exception) else "done"
    assert seen == [(kind, GenerationFailed if kind == "error" else str, [], [request])]
    assert done == [request] and worker.queue_depth == 0


def test_a_request_cancelled_in_the_queue_has_left_it_too():
    counted: list[Request] = []
    worker = ModelWorker("model", backend=None, queue_length=4, on_finished=counted.append, on_done=lambda r: None)
    seen: list[tuple] = []
    request = Request(work=_work("never"), stats=RequestStats("model", "test", "generate", time.time()),
                      sink=lambda m: seen.append((m[0], list(worker.active), list(counted))))
    request.cancel()
    try:
        worker.submit(request)
        assert request.finished.wait(5)
    finally:
        worker.stop()
    assert seen == [("error", [], [request])] and request.stats.finish_reason == "cancelled"
