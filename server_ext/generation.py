"""One path for streaming and non-streaming generation.

A `GenerationJob` runs a request's generations (one per prompt) and yields events; a renderer turns
the events into SSE chunks or collects them into one response. Failures are events too.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Union

from pydantic import BaseModel

from universal_kernel.backends import GenerationParams

from . import protocol as p
from .errors import Failure, failure, failure_from


def shutting_down() -> Failure:
    """What a request still running when the server stops gets (an error event, or a 503 before any text)."""
    return failure(503, "the Jupyter server is shutting down; the generation was stopped", "server_error",
                   code="server_shutting_down", retry=True)


# Generation events ----------------------------------------------------------------------------------
@dataclass
class Delta:
    index: int
    text: str


@dataclass
class Finished:
    index: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[dict] | None = None  # when asked for: GenerationOutcome.logprobs


@dataclass
class Failed:
    failure: Failure


Event = Union[Delta, Finished, Failed]


class GenerationJob:
    """The generations of one request (one per prompt), as a stream of events.

    `prime()` waits for the first event so that a failure before any text (unknown model, prompt
    too long, busy) is still an HTTP error; after that, failures arrive as `Failed` events.
    `cancel()` (client gone) stops the running generation; `aclose()` waits until the slot is free.
    """

    def __init__(self, runtime, model: str | None, inputs: list[dict], params: GenerationParams, backend: str,
                 keep_alive: float | None, echo: bool = False):
        self.runtime = runtime
        self.model = model
        self.inputs = inputs
        self.params = params
        self.backend = backend
        self.keep_alive = keep_alive
        self.echo = echo
        self.id = ""
        self.created = p.now()
        self.model_id = model or ""
        self.usage = p.Usage()
        self.cancelled = False
        self.aborted: Failure | None = None
        self._stream = None
        self._events = self._run()
        self._first: Event | None = None

    async def _run(self) -> AsyncIterator[Event]:
        for index, given in enumerate(self.inputs):
            if self.cancelled or self.aborted:
                break
            given = dict(given)
            params = given.pop("params", self.params)  # a sample of n has its own seed
            try:
                self._stream = await self.runtime.astream(self.model, params=params, backend=self.backend,
                                                          keep_alive=self.keep_alive, **given)
                self.model_id = self._stream.model
                if self.cancelled or self.aborted:
                    break
                if self.echo and given.get("prompt"):
                    yield Delta(index, given["prompt"])
                async for piece in self._stream:
                    if self.aborted:
                        break
                    yield Delta(index, piece)
                if self.aborted:
                    break
                done = self._stream.completion
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a value
                yield Failed(self.aborted or failure_from(exc))
                return
            finally:
                if self._stream is not None:
                    await self._stream.aclose()
            self.usage.prompt_tokens += done.prompt_tokens
            self.usage.completion_tokens += done.completion_tokens
            self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens
            reason = done.finish_reason if done.finish_reason in ("stop", "length") else "stop"
            yield Finished(index, reason, done.prompt_tokens, done.completion_tokens, getattr(done, "logprobs", None))
        if self.aborted and not self.cancelled:
            yield Failed(self.aborted)

    async def prime(self) -> Failure | None:
        try:
            self._first = await self._events.__anext__()
        except StopAsyncIteration:
            self._first = None
        if isinstance(self._first, Failed):
            return self._first.failure
        return None

    async def events(self) -> AsyncIterator[Event]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for event in self._events:
            yield event

    def cancel(self) -> None:
        """The client went away: stop generating (thread-safe, returns at once)."""
        self.cancelled = True
        if self._stream is not None:
            self._stream.request.cancel()

    def abort(self, reason: Failure) -> None:
        """Stop now and end with `reason` as the last event (the server is shutting down).
        Call on the event loop's thread."""
        if self.aborted is None:
            self.aborted = reason
        stream = self._stream
        if stream is not None:
            from universal_kernel.errors import Cancelled

            stream.interrupt(Cancelled(reason.body.error.message))

    async def aclose(self) -> None:
        await self._events.aclose()
        if self._stream is not None:
            await self._stream.aclose()


class Jobs:
    """The generations the handlers are serving, so that a stopping server can end each one properly."""

    def __init__(self):
        self.active: set[GenerationJob] = set()
        self.closing: Failure | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, job: GenerationJob) -> None:
        self.active.add(job)
        self._idle.clear()

    def discard(self, job: GenerationJob) -> None:
        self.active.discard(job)
        if not self.active:
            self._idle.set()

    def abort_all(self, reason: Failure) -> int:
        """Refuse new generations and stop the running ones, each ending with `reason`. Returns how many."""
        self.closing = reason
        for job in list(self.active):
            job.abort(reason)
        return len(self.active)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every handler has sent its last event (and finished its response)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


# Rendering: one path for streaming and non-streaming ---------------------------------------------------
async def collect_texts(job: GenerationJob) -> dict[int, tuple[str, str, list | None]] | Failure:
    """Read a job to its end: choice index -> (whole text, finish reason, logprobs or None), in index order."""
    texts: dict[int, list[str]] = {}
    ends: dict[int, Finished] = {}
    async for event in job.events():
        if isinstance(event, Failed):
            return event.failure
        if isinstance(event, Delta):
            texts.setdefault(event.index, []).append(event.text)
        else:
            ends[event.index] = event
    return {i: ("".join(texts.get(i, [])), ends[i].finish_reason, ends[i].logprobs) for i in sorted(ends)}


def chat_logprobs(logprobs: list[dict] | None) -> p.ChoiceLogprobs | None:
    return None if logprobs is None else p.ChoiceLogprobs(content=[p.TokenLogprob(**item) for item in logprobs])


def completion_logprobs(logprobs: list[dict] | None, offset: int = 0) -> p.CompletionLogprobs | None:
    """OpenAI's legacy form; `offset`: where the generated text starts in the choice's text (echo)."""
    if logprobs is None:
        return None
    offsets = []
    for item in logprobs:
        offsets.append(offset)
        offset += len(item["token"])
    return p.CompletionLogprobs(
        tokens=[item["token"] for item in logprobs], token_logprobs=[item["logprob"] for item in logprobs],
        top_logprobs=[{top["token"]: top["logprob"] for top in item["top_logprobs"]} for item in logprobs],
        text_offset=offsets)


class ChatRenderer:
    """Turns a job's events into chat.completion chunks, or collects them into one chat.completion."""

    def __init__(self, job: GenerationJob, include_usage: bool):
        self.job = job
        self.include_usage = include_usage
        self.job.id = p.new_id("chatcmpl")

    def _chunk(self, choices, usage=None) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(id=self.job.id, created=self.job.created, model=self.job.model_id,
                                     choices=choices, usage=usage)

    async def chunks(self) -> AsyncIterator[BaseModel]:
        started: set[int] = set()
        async for event in self.job.events():
            if isinstance(event, Failed):
                yield event.failure.body
                return
            if event.index not in started:
                started.add(event.index)
                yield self._chunk([p.ChatChunkChoice(index=event.index, delta=p.ChatDelta(role="assistant",
                                                                                            content=""))])
            if isinstance(event, Delta):
                yield self._chunk([p.ChatChunkChoice(index=event.index, delta=p.ChatDelta(content=event.text))])
            else:
                if event.logprobs is not None:  # scored once the text is complete: one chunk at its end
                    yield self._chunk([p.ChatChunkChoice(index=event.index, delta=p.ChatDelta(content=""),
                                                         logprobs=chat_logprobs(event.logprobs))])
                yield self._chunk([p.ChatChunkChoice(index=event.index, delta=p.ChatDelta(),
                                                     finish_reason=event.finish_reason)])
        if self.include_usage:
            yield self._chunk([], usage=self.job.usage)

    async def collect(self) -> p.ChatCompletion | Failure:
        collected = await collect_texts(self.job)
        if isinstance(collected, Failure):
            return collected
        choices = [p.ChatChoice(index=i, message=p.ChatMessage(content=text), finish_reason=reason,
                                logprobs=chat_logprobs(logprobs))
                   for i, (text, reason, logprobs) in collected.items()]
        return p.ChatCompletion(id=self.job.id, created=self.job.created, model=self.job.model_id,
                                choices=choices, usage=self.job.usage)


class CompletionRenderer:
    """The same for text completions."""

    def __init__(self, job: GenerationJob, include_usage: bool):
        self.job = job
        self.include_usage = include_usage
        self.job.id = p.new_id("cmpl")

    def _chunk(self, choices, usage=None) -> p.Completion:
        return p.Completion(id=self.job.id, created=self.job.created, model=self.job.model_id, choices=choices,
                            usage=usage)

    async def chunks(self) -> AsyncIterator[BaseModel]:
        sent: dict[int, int] = {}  # characters sent per choice
        async for event in self.job.events():
            if isinstance(event, Failed):
                yield event.failure.body
                return
            if isinstance(event, Delta):
                sent[event.index] = sent.get(event.index, 0) + len(event.text)
                yield self._chunk([p.CompletionChoice(index=event.index, text=event.text)])
            else:
                if event.logprobs is not None:
                    start = sent.get(event.index, 0) - sum(len(item["token"]) for item in event.logprobs)
                    yield self._chunk([p.CompletionChoice(index=event.index, text="",
                                                          logprobs=completion_logprobs(event.logprobs, start))])
                yield self._chunk([p.CompletionChoice(index=event.index, text="",
                                                      finish_reason=event.finish_reason)])
        if self.include_usage:
            yield self._chunk([], usage=self.job.usage)

    async def collect(self) -> p.Completion | Failure:
        collected = await collect_texts(self.job)
        if isinstance(collected, Failure):
            return collected
        choices = [p.CompletionChoice(index=i, text=text, finish_reason=reason, logprobs=completion_logprobs(
                       logprobs, len(text) - sum(len(item["token"]) for item in logprobs or [])))
                   for i, (text, reason, logprobs) in collected.items()]
        return self._chunk(choices, usage=self.job.usage)


Renderer = Union[ChatRenderer, CompletionRenderer]
