"""One worker thread per loaded model: requests start in the order they came.

A llama.cpp context is not thread-safe, and a CPU runs one model's matmuls best alone, so each
model has a single thread that owns its backend. Most models run one request at a time
(`ModelWorker`); a backend declared to decode a model's generations together (`backends.batches`) gets a
`BatchingWorker`, which runs up to `backend.parallel` generations at once and lets a new one join
at the next step. Readers get the results through a `sink`, which is a plain queue for the kernel
and an asyncio bridge for the server.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import Busy, Cancelled, RuntimeFailure, WorkerLost
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
    """A model's thread. Should it die (an exception that escaped its loop, or one raised into it), its
    requests end with `WorkerLost`, it refuses new ones, and `on_death(worker, exc)` is told first (the
    cache unloads the model, so that the next request loads it again)."""

    def __init__(self, name: str, backend, *, queue_length: int, on_done: Callable[[Request], None],
                 on_finished: Callable[[Request], None] = lambda request: None,
                 on_death: Callable[["ModelWorker", BaseException], None] = lambda worker, exc: None):
        self.name = name
        self.backend = backend
        self.queue_length = queue_length
        self.on_finished = on_finished  # before the reader gets the last message: the figures it may read next
        self.on_done = on_done  # after it: the model's idle timer (an unload may take a while)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self.waiting = 0
        self.active: list[Request] = []  # the requests running now
        self.on_death = on_death
        self.stopping = False  # stop() was called: the thread ends on purpose
        self.died_at: float | None = None  # wall clock of its death, if it died
        self.death: str | None = None  # what killed it
        self.thread = threading.Thread(target=self._live, name=f"universal-kernel:{name}", daemon=True)
        self.thread.start()

    #: requests that run at once
    slots = 1

    @property
    def running(self) -> Request | None:
        """The oldest request running now, if any."""
        active = self.active
        return active[0] if active else None

    @property
    def queue_depth(self) -> int:
        """Requests waiting plus those running."""
        return self.waiting + len(self.active)

    def submit(self, request: Request) -> None:
        with self._lock:
            if self.died_at is not None:
                raise self.lost()
            # a request that a free slot will take at once is not waiting, though the worker has not
            # taken it yet: the queue holds `queue_length` beyond the slots
            if self.waiting >= self.queue_length + max(0, self.slots - len(self.active)):
                raise Busy(f"{self.name!r} has {self.waiting} requests waiting; try again shortly",
                           retry_after=1.0)
            self.waiting += 1
        self._queue.put(request)

    def stop(self) -> None:
        self.stopping = True
        self._queue.put(None)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def lost(self) -> WorkerLost:
        """The error of a request that this (dead) worker cannot finish."""
        return WorkerLost(f"the worker of {self.name!r} died ({self.death}); the next request loads it again")

    def _live(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - whatever it was, its requests must end and the model go
            self._dying(exc)
            self._fail_all(self.lost())

    def _dying(self, exc: BaseException) -> WorkerLost:
        """Record the death (once) and tell `on_death`, before any reader learns of it: a reader that retries
        on its error finds the model unloaded. Returns the error its requests end with."""
        with self._lock:
            first = self.died_at is None
            if first:
                self.died_at = time.time()
                self.death = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if first:
            try:
                self.on_death(self, exc)
            except Exception:  # noqa: BLE001 - the requests must still end
                pass
        return self.lost()

    def _fail_all(self, error: WorkerLost) -> None:
        """End the requests running and those queued with `error`: no reader waits on a dead thread."""
        with self._lock:
            ending = list(self.active)
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                with self._lock:
                    self.waiting -= 1
                ending.append(request)
        for request in ending:
            if not request.finished.is_set():
                request.stats.finish_reason = "error"
                try:
                    self._end(request, ("error", error))
                except Exception:  # noqa: BLE001 - a failing callback must not keep the others waiting
                    pass

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            with self._lock:
                self.waiting -= 1
                self.active = [request]
            self._run_alone(request)

    def _run_alone(self, request: Request) -> None:
        last: tuple[str, Any] | None = None
        try:
            last = self._start(request)
            if last is None:
                try:
                    outcome = request.work(self.backend, self._emitter(request), request.cancel_event.is_set)
                except Exception as exc:
                    last = self._fail(request, exc)
                else:
                    last = self._succeed(request, outcome)
        except BaseException as exc:  # it kills the worker (`_live`): this request's reader learns why
            request.stats.finish_reason = "error"
            last = "error", self._dying(exc)
            raise
        finally:
            self._end(request, last)

    def _start(self, request: Request) -> tuple[str, Any] | None:
        """The request leaves the queue; its last message when it was cancelled meanwhile, else None."""
        request.started = time.perf_counter()
        request.stats.queue_wait_s = request.started - request.enqueued
        if request.cancelled:
            request.stats.finish_reason = "cancelled"
            return "error", Cancelled("the request was cancelled before it started")
        return None

    @staticmethod
    def _emitter(request: Request) -> Callable[[str], None]:
        def emit(text: str) -> None:
            if request.first_token is None:
                request.first_token = time.perf_counter()
            request.sink(("text", text))

        return emit

    def _end(self, request: Request, last: tuple[str, Any] | None) -> None:
        """The request leaves the running ones and its figures are counted before its reader gets the
        last message, so a client that asks for the status once answered never counts itself in it."""
        try:
            with self._lock:
                self.active = [r for r in self.active if r is not request]
            self.on_finished(request)
        finally:
            if last is not None:
                request.sink(last)
            request.finished.set()
            self.on_done(request)

    @staticmethod
    def _fail(request: Request, exc: Exception) -> tuple[str, Any]:
        request.stats.finish_reason = "error"
        if not isinstance(exc, RuntimeFailure):  # a backend bug must reach the reader, never kill the worker
            from .errors import GenerationFailed

            exc = GenerationFailed(f"{type(exc).__name__}: {exc}")
        return "error", exc

    @staticmethod
    def _succeed(request: Request, outcome) -> tuple[str, Any]:
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
        return "done", outcome


class BatchingWorker(ModelWorker):
    """The worker of a backend that decodes up to `backend.parallel` generations together.

    Generations (work with a `begin`: tasks/generate.py) join the batch while a slot is free and
    leave it when they end; the backend's `step()` advances all of them by one token. Other work
    (zero-shot labels on a chat model, say) needs the context alone: it waits at the head of the
    queue, no generation joins after it, and it runs once the batch has drained, so requests still
    start in the order they came.
    """

    def __init__(self, name: str, backend, **kwargs):
        self.slots = backend.parallel  # read once: the backend is closed (and dropped) after the worker stops
        super().__init__(name, backend, **kwargs)

    def _run(self) -> None:
        held: Request | None = None  # work that waits for the batch to drain
        stopping = False
        sequences: dict[int, Request] = {}  # id(backend sequence) -> request
        while True:
            while not stopping and held is None and len(sequences) < self.slots:
                try:
                    request = self._queue.get(block=not sequences)
                except queue.Empty:
                    break
                if request is None:
                    stopping = True
                    break
                with self._lock:
                    self.waiting -= 1
                    self.active = self.active + [request]
                if getattr(request.work, "begin", None) is None:
                    held = request
                else:
                    self._join(request, sequences)
            if sequences:
                self._step(sequences)
            elif held is not None:
                request, held = held, None
                self._run_alone(request)
            elif stopping:
                return

    def _join(self, request: Request, sequences: dict) -> None:
        last = self._start(request)
        if last is not None:
            self._end(request, last)
            return
        try:
            sequence = request.work.begin(self.backend, self._emitter(request), request.cancel_event.is_set)
        except Exception as exc:
            self._end(request, self._fail(request, exc))
            return
        sequences[id(sequence)] = request

    def _step(self, sequences: dict) -> None:
        try:
            results = self.backend.step()
        except Exception as exc:  # the backend frees its batch on its own errors; this is a bug
            for request in sequences.values():
                self._end(request, self._fail(request, exc))
            sequences.clear()
            return
        for sequence, outcome in results:
            request = sequences.pop(id(sequence))
            if isinstance(outcome, Exception):
                self._end(request, self._fail(request, outcome))
            else:
                self._end(request, self._succeed(request, outcome))


def make_worker(name: str, backend, *, batching: bool, queue_length: int, on_done: Callable[[Request], None],
                on_finished: Callable[[Request], None] = lambda request: None,
                on_death: Callable[[ModelWorker, BaseException], None] = lambda worker, exc: None) -> ModelWorker:
    """A batching worker for a backend that decodes this model's generations together (as its declaration
    says: `backends.batches`), else a one-at-a-time worker."""
    kind = BatchingWorker if batching else ModelWorker
    return kind(name, backend, queue_length=queue_length, on_done=on_done, on_finished=on_finished,
                on_death=on_death)
