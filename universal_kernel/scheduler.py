"""One worker thread per loaded model: requests run one at a time, in the order they came.

A llama.cpp context is not thread-safe, and a CPU runs one model's matmuls best alone, so each
model has a single thread that owns its backend. Readers get the results through a `sink`, which
is a plain queue for the kernel and an asyncio bridge for the server.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import Busy, Cancelled, RuntimeFailure
from .stats import RequestStats

_ids = itertools.count(1)

# What a sink receives: ("text", str), ("done", outcome), ("error", exception).
Sink = Callable[[tuple[str, Any]], None]


@dataclass
class Request:
    """A unit of work for a model's worker: `work(backend, emit, cancelled)` returns the outcome."""

    work: Callable[[Any, Callable[[str], None], Callable[[], bool]], Any]
    sink: Sink
    stats: RequestStats
    enqueued: float = field(default_factory=time.perf_counter)
    id: int = field(default_factory=lambda: next(_ids))
    cancel_event: threading.Event = field(default_factory=threading.Event)
    started: float | None = None
    first_token: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class ModelWorker:
    def __init__(self, name: str, backend, *, queue_length: int, on_done: Callable[[Request], None]):
        self.name = name
        self.backend = backend
        self.queue_length = queue_length
        self.on_done = on_done
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0
        self.running: Request | None = None
        self.thread = threading.Thread(target=self._run, name=f"universal-kernel:{name}", daemon=True)
        self.thread.start()

    @property
    def queue_depth(self) -> int:
        return self.waiting + (1 if self.running is not None else 0)

    def submit(self, request: Request) -> None:
        with self._lock:
            if self.waiting >= self.queue_length:
                raise Busy(f"{self.name!r} has {self.waiting} requests waiting; try again shortly",
                           retry_after=1.0)
            self.waiting += 1
        self._queue.put(request)

    def stop(self) -> None:
        self._queue.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            with self._lock:
                self.waiting -= 1
                self.running = request
            try:
                self._serve(request)
            finally:
                with self._lock:
                    self.running = None
                request.finished.set()
                self.on_done(request)

    def _serve(self, request: Request) -> None:
        request.started = time.perf_counter()
        request.stats.queue_wait_s = request.started - request.enqueued
        if request.cancelled:
            request.stats.finish_reason = "cancelled"
            request.sink(("error", Cancelled("the request was cancelled before it started")))
            return

        def emit(text: str) -> None:
            if request.first_token is None:
                request.first_token = time.perf_counter()
            request.sink(("text", text))

        try:
            outcome = request.work(self.backend, emit, lambda: request.cancel_event.is_set())
        except RuntimeFailure as exc:
            request.stats.finish_reason = "error"
            request.sink(("error", exc))
        except Exception as exc:  # a backend bug must reach the reader, never kill the worker
            request.stats.finish_reason = "error"
            from .errors import GenerationFailed

            request.sink(("error", GenerationFailed(f"{type(exc).__name__}: {exc}")))
        else:
            end = time.perf_counter()
            stats = request.stats
            stats.total_s = stats.load_s + end - request.enqueued
            if request.first_token is not None:
                stats.ttft_s = stats.load_s + request.first_token - request.enqueued
            stats.prompt_tokens = getattr(outcome, "prompt_tokens", stats.prompt_tokens)
            tokens = stats.completion_tokens = getattr(outcome, "completion_tokens", stats.completion_tokens)
            if tokens and end > request.started:
                stats.tokens_per_s = tokens / (end - request.started)
            stats.finish_reason = getattr(outcome, "finish_reason", "stop")
            request.sink(("done", outcome))
