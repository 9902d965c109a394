"""Readers of a running generation: a synchronous iterator for the kernel, an async one for the server.

Both read what the model's worker sends through the request's sink. Neither can hang on a dead
worker: every reader of a worker (these streams, `Runtime.run`, `Runtime.arun`) waits through one
`WorkerWait`, which waits with a timeout and checks that the worker thread is still alive.
"""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass
from typing import Any

from .errors import GenerationFailed
from .scheduler import Request
from .stats import RequestStats


class WorkerWait:
    """Waits for the next item a model's worker sends about one request, checking in slices of `poll_s`
    that the worker still lives; whatever ends the wait early (an interrupt, the worker's death)
    cancels the request."""

    def __init__(self, request: Request, worker, model_id: str, poll_s: float):
        self.request, self.worker, self.model, self.poll_s = request, worker, model_id, poll_s

    def check(self) -> None:
        """A reader waiting on a worker that died without finishing the request must not wait forever."""
        if not self.worker.thread.is_alive() and not self.request.finished.is_set():
            if getattr(self.worker, "died_at", None) is not None:
                raise self.worker.lost()
            raise GenerationFailed(f"the worker of {self.model!r} stopped without finishing the request")

    def next(self, inbox: queue.SimpleQueue) -> tuple[str, Any]:
        try:
            while True:
                try:
                    return inbox.get(timeout=self.poll_s)
                except queue.Empty:
                    self.check()
        except BaseException:
            self.request.cancel()
            raise

    async def anext(self, inbox: asyncio.Queue) -> tuple[str, Any]:
        """`next` on the event loop (the async queue an `async_sink` fills)."""
        try:
            while True:
                try:
                    return await asyncio.wait_for(inbox.get(), timeout=max(self.poll_s, 0.5))
                except asyncio.TimeoutError:
                    self.check()
        except BaseException:
            self.request.cancel()
            raise


def result_of(item: tuple[str, Any]):
    """A finished request's result, or its error raised."""
    kind, value = item
    if kind == "error":
        raise value
    return value


@dataclass
class Completion:
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    stats: RequestStats
    logprobs: list[dict] | None = None  # when asked for: see GenerationOutcome.logprobs

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _StreamBase:
    def __init__(self, request: Request, worker, model_id: str, poll_s: float):
        self.request = request
        self.worker = worker
        self.model = model_id
        self._wait = WorkerWait(request, worker, model_id, poll_s)
        self.parts: list[str] = []
        self.completion: Completion | None = None

    @property
    def stats(self) -> RequestStats:
        return self.request.stats

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _handle(self, item: tuple[str, Any]) -> str | None:
        """Return text to yield, None when finished; raise the worker's error."""
        kind, value = item
        if kind == "text":
            self.parts.append(value)
            return value
        if kind == "error":
            raise value
        self.completion = Completion(self.model, self.text, value.finish_reason, value.prompt_tokens,
                                     value.completion_tokens, self.request.stats,
                                     getattr(value, "logprobs", None))
        self.request.stats.prompt_tokens = value.prompt_tokens
        self.request.stats.completion_tokens = value.completion_tokens
        return None


class ReadToEnd:
    """`result()` and `with` for a synchronous stream that iterates text pieces and has `close()`."""

    completion: Completion | None

    def result(self) -> Completion:
        for _ in self:
            pass
        return self.completion

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GenerationStream(ReadToEnd, _StreamBase):
    """Iterate to get text pieces as they come; `completion` holds the result once done.

    Closing it early (or a KeyboardInterrupt while reading) cancels the generation.
    """

    def __init__(self, request: Request, inbox: queue.SimpleQueue, worker, model_id: str, poll_s: float):
        super().__init__(request, worker, model_id, poll_s)
        self._inbox = inbox
        self._done = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._done:
            raise StopIteration
        try:
            piece = self._handle(self._wait.next(self._inbox))
        except BaseException:
            self._done = True
            self.request.cancel()
            raise
        if piece is None:
            self._done = True
            raise StopIteration
        return piece

    def close(self, wait: float = 5.0) -> None:
        """Cancel if still running, and wait (briefly) until the model's slot is free."""
        if not self._done:
            self._done = True
            self.request.cancel()
            self.request.finished.wait(timeout=wait)

    def __del__(self):
        if not self._done:
            self.request.cancel()


class AsyncGenerationStream(_StreamBase):
    """The async form for the server: never blocks the event loop."""

    def __init__(self, request: Request, inbox: asyncio.Queue, worker, model_id: str, poll_s: float):
        super().__init__(request, worker, model_id, poll_s)
        self._inbox = inbox
        self._done = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        try:
            piece = self._handle(await self._wait.anext(self._inbox))
        except BaseException:
            self._done = True
            self.request.cancel()
            raise
        if piece is None:
            self._done = True
            raise StopAsyncIteration
        return piece

    def interrupt(self, error: BaseException) -> None:
        """Stop now with `error` (the server is shutting down): cancel the request and wake the reader,
        which raises `error` at once instead of waiting for the worker. Call on the event loop's thread."""
        self.request.cancel()
        if not self._done:
            self._inbox.put_nowait(("error", error))

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self.request.cancel()
            await asyncio.get_running_loop().run_in_executor(None, self.request.finished.wait, 5.0)

    async def result(self) -> Completion:
        async for _ in self:
            pass
        return self.completion

    def __del__(self):
        if not self._done:
            self.request.cancel()


def async_sink(loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue):
    def sink(item):
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is reading any more
            pass

    return sink
