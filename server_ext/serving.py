"""The serving layer: OpenAI wire types in, runtime calls, wire types out.

Errors are values here: every public method returns either its result or a `Failure` (HTTP status,
OpenAI error body, headers). Typed runtime errors become failures in `failure_from`, the one place
where runtime errors meet HTTP. Streaming and non-streaming generation share one path: a
`GenerationJob` yields events, which the handler either sends as SSE chunks or collects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Union

import numpy as np
from pydantic import BaseModel, ValidationError

from universal_kernel.backends import GenerationParams
from universal_kernel.errors import (
    BackendUnavailable, Busy, Cancelled, GenerationFailed, InvalidRequest, LoadFailed, MemoryBudgetExceeded,
    ModelNotFound, ReferenceRefused, RuntimeFailure, WrongTask,
)

from . import protocol as p

log = logging.getLogger("universal_kernel.server_ext")


# Failures ---------------------------------------------------------------------------------------
@dataclass
class Failure:
    status: int
    body: p.ErrorResponse
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        return self.body.model_dump_json()


def failure(status: int, message: str, type: str = "invalid_request_error", *, param: str | None = None,
            code: str | None = None, retry: bool | None = None, retry_after: float | None = None) -> Failure:
    """An OpenAI error. `retry=False` tells the official client not to retry (`x-should-retry`)."""
    headers = {}
    if retry is None:  # 4xx other than 408/409/429 cannot be fixed by retrying
        retry = False if 400 <= status < 500 and status not in (408, 409, 429) else None
    if retry is not None:
        headers["x-should-retry"] = "true" if retry else "false"
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Failure(status, p.ErrorResponse(error=p.ErrorInfo(message=message, type=type, param=param, code=code)),
                   headers)


# status, type, code, retry for each typed runtime error (most specific first)
_RUNTIME_ERRORS: list[tuple[type, int, str, str, bool | None]] = [
    (ModelNotFound, 404, "invalid_request_error", "model_not_found", False),
    (ReferenceRefused, 400, "invalid_request_error", "model_refused", False),
    (WrongTask, 400, "invalid_request_error", "wrong_model_task", False),
    (InvalidRequest, 400, "invalid_request_error", "invalid_value", False),
    (Busy, 429, "rate_limit_error", "model_busy", True),
    (MemoryBudgetExceeded, 507, "server_error", "memory_budget_exceeded", False),
    (BackendUnavailable, 501, "server_error", "backend_unavailable", False),
    (LoadFailed, 500, "server_error", "load_failed", False),
    (Cancelled, 499, "server_error", "cancelled", None),
    (GenerationFailed, 500, "server_error", "generation_failed", None),
]


def failure_from(exc: BaseException) -> Failure:
    """Map an exception to an OpenAI failure; unexpected ones are logged and never leak a traceback."""
    for kind, status, type_, code, retry in _RUNTIME_ERRORS:
        if isinstance(exc, kind):
            return failure(status, exc.message, type_, param=exc.param, code=code, retry=retry,
                           retry_after=getattr(exc, "retry_after", None))
    if isinstance(exc, RuntimeFailure):
        return failure(500, exc.message, "server_error", param=exc.param, code="runtime_error")
    log.error("unexpected error while serving", exc_info=exc)
    return failure(500, f"internal error ({type(exc).__name__}); see the Jupyter server log", "server_error",
                   code="internal_error")


def parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body into a wire type, or a 400 failure naming the bad parameter."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        return failure(400, f"the request body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(data, dict):
        return failure(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or None
        return failure(400, f"{loc}: {first['msg']}" if loc else first["msg"], param=loc, code="invalid_value")


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Ollama's keep_alive: seconds, or a duration such as "5m", "1h", "-1"."""
    if value is None or isinstance(value, (int, float)):
        return value
    match = _DURATION.match(value)
    if not match:
        raise InvalidRequest(f"keep_alive {value!r} is not a number of seconds or a duration like 5m",
                             param="keep_alive")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


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
        self._stream = None
        self._events = self._run()
        self._first: Event | None = None

    async def _run(self) -> AsyncIterator[Event]:
        for index, given in enumerate(self.inputs):
            if self.cancelled:
                return
            try:
                self._stream = await self.runtime.astream(self.model, params=self.params, backend=self.backend,
                                                          keep_alive=self.keep_alive, **given)
                self.model_id = self._stream.model
                if self.cancelled:
                    return
                if self.echo and given.get("prompt"):
                    yield Delta(index, given["prompt"])
                async for piece in self._stream:
                    yield Delta(index, piece)
                done = self._stream.completion
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a value
                yield Failed(failure_from(exc))
                return
            finally:
                if self._stream is not None:
                    await self._stream.aclose()
            self.usage.prompt_tokens += done.prompt_tokens
            self.usage.completion_tokens += done.completion_tokens
            self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens
            reason = done.finish_reason if done.finish_reason in ("stop", "length") else "stop"
            yield Finished(index, reason, done.prompt_tokens, done.completion_tokens)

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

    async def aclose(self) -> None:
        await self._events.aclose()
        if self._stream is not None:
            await self._stream.aclose()


# Rendering: one path for streaming and non-streaming ---------------------------------------------------
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
                yield self._chunk([p.ChatChunkChoice(index=event.index, delta=p.ChatDelta(),
                                                     finish_reason=event.finish_reason)])
        if self.include_usage:
            yield self._chunk([], usage=self.job.usage)

    async def collect(self) -> p.ChatCompletion | Failure:
        texts: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        async for event in self.job.events():
            if isinstance(event, Failed):
                return event.failure
            if isinstance(event, Delta):
                texts.setdefault(event.index, []).append(event.text)
            else:
                reasons[event.index] = event.finish_reason
        choices = [p.ChatChoice(index=i, message=p.ChatMessage(content="".join(texts.get(i, []))),
                                finish_reason=reasons[i]) for i in sorted(reasons)]
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
        async for event in self.job.events():
            if isinstance(event, Failed):
                yield event.failure.body
                return
            if isinstance(event, Delta):
                yield self._chunk([p.CompletionChoice(index=event.index, text=event.text)])
            else:
                yield self._chunk([p.CompletionChoice(index=event.index, text="",
                                                      finish_reason=event.finish_reason)])
        if self.include_usage:
            yield self._chunk([], usage=self.job.usage)

    async def collect(self) -> p.Completion | Failure:
        texts: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        async for event in self.job.events():
            if isinstance(event, Failed):
                return event.failure
            if isinstance(event, Delta):
                texts.setdefault(event.index, []).append(event.text)
            else:
                reasons[event.index] = event.finish_reason
        choices = [p.CompletionChoice(index=i, text="".join(texts.get(i, [])), finish_reason=reasons[i])
                   for i in sorted(reasons)]
        return self._chunk(choices, usage=self.job.usage)


Renderer = Union[ChatRenderer, CompletionRenderer]


# The serving object ---------------------------------------------------------------------------------
def _refuse_unsupported(req: p._Sampling) -> Failure | None:
    if req.n not in (None, 1):
        return failure(400, "n must be 1: this server returns one choice per prompt", param="n",
                       code="unsupported_parameter")
    if req.logprobs not in (None, False, 0):
        return failure(400, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
    return None


def _params(req: p._Sampling, max_tokens: int | None, response_format: p.ResponseFormat | None) -> GenerationParams:
    given = {name: getattr(req, name) for name in (
        "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
        "repeat_penalty") if getattr(req, name) is not None}
    if req.stop is not None:
        given["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if response_format is not None and response_format.type != "text":
        if response_format.type == "json_schema":
            if response_format.json_schema is not None:
                schema = response_format.json_schema.schema_
            elif response_format.schema_ is not None:
                schema = response_format.schema_
            else:
                raise InvalidRequest("response_format json_schema needs a json_schema object",
                                     param="response_format.json_schema")
            given["response_format"] = {"type": "json_schema", "schema": schema}
        else:
            given["response_format"] = {"type": "json_object"}
    return GenerationParams(max_tokens=max_tokens, **given)


class Serving:
    """Everything the HTTP handlers need, as plain async methods returning values or failures."""

    def __init__(self, runtime, *, max_body_size: int):
        self.runtime = runtime
        self.max_body_size = max_body_size

    async def _off_loop(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # Models -------------------------------------------------------------------------------------
    @staticmethod
    def _card(info: dict) -> p.ModelCard:
        return p.ModelCard(id=info["id"], created=p.now(), loaded=info.get("loaded", False), task=info.get("task"),
                           format=info.get("format"), architecture=info.get("architecture"),
                           size_bytes=info.get("size_bytes"), backends=info.get("backends", []))

    async def models(self) -> p.ModelList | Failure:
        try:
            found = await self._off_loop(self.runtime.models)
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
        return p.ModelList(data=[self._card(info) for info in found])

    async def model(self, model_id: str) -> p.ModelCard | Failure:
        def find():
            for info in self.runtime.models():
                if info["id"] == model_id:
                    return info
            spec = self.runtime.resolve(model_id)  # a path or hub id that is servable but not listed
            loaded = [e for e in self.runtime.cache.entries() if e.spec.key == spec.key]
            return {"id": model_id, "task": spec.task, "format": spec.format, "architecture": spec.architecture,
                    "size_bytes": spec.size_bytes, "loaded": bool(loaded),
                    "backends": [e.backend_name for e in loaded]}

        try:
            return self._card(await self._off_loop(find))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)

    # Generation ---------------------------------------------------------------------------------
    async def chat(self, req: p.ChatCompletionRequest) -> Renderer | Failure:
        refused = _refuse_unsupported(req)
        if refused is None and req.tools:
            refused = failure(400, "tools are not supported", param="tools", code="unsupported_parameter")
        if refused is None and req.top_logprobs:
            refused = failure(400, "logprobs are not supported", param="top_logprobs", code="unsupported_parameter")
        if refused:
            return refused
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        return await self._start(req, [{"messages": req.messages}], max_tokens, req.response_format, ChatRenderer)

    async def completion(self, req: p.CompletionRequest) -> Renderer | Failure:
        refused = _refuse_unsupported(req)
        if refused is None and req.best_of not in (None, 1):
            refused = failure(400, "best_of must be 1", param="best_of", code="unsupported_parameter")
        if refused is None and req.suffix:
            refused = failure(400, "suffix is not supported", param="suffix", code="unsupported_parameter")
        if refused:
            return refused
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or not all(isinstance(one, str) for one in prompts):
            return failure(400, "prompt must be a string or a non-empty list of strings (token ids are not "
                                "supported)", param="prompt", code="invalid_value")
        return await self._start(req, [{"prompt": one} for one in prompts], req.max_tokens, req.response_format,
                                 CompletionRenderer, echo=req.echo)

    async def _start(self, req, inputs, max_tokens, response_format, renderer, echo=False) -> Renderer | Failure:
        """A renderer over a job that has not started: the caller primes it (see GenerationJob)."""
        try:
            params = _params(req, max_tokens, response_format)
            job = GenerationJob(self.runtime, req.model, inputs, params, req.backend,
                                keep_alive_seconds(req.keep_alive), echo=echo)
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return renderer(job, include_usage)

    # Embeddings ---------------------------------------------------------------------------------
    async def embeddings(self, req: p.EmbeddingRequest) -> p.EmbeddingResponse | Failure:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(isinstance(t, str) for t in texts):
            return failure(400, "input must be a string or a non-empty list of strings (token ids are not "
                                "supported)", param="input", code="invalid_value")
        try:
            result = await self.runtime.aembed(texts, req.model, normalize=req.normalize, backend=req.backend,
                                               keep_alive=keep_alive_seconds(req.keep_alive))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if req.dimensions is not None:
            if req.dimensions > vectors.shape[1]:
                return failure(400, f"dimensions must be at most {vectors.shape[1]} for {result.model!r}",
                               param="dimensions", code="invalid_value")
            vectors = vectors[:, : req.dimensions]
            if req.normalize:
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        if req.encoding_format == "base64":
            encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        else:
            encoded = [row.tolist() for row in vectors]
        return p.EmbeddingResponse(
            data=[p.EmbeddingData(index=i, embedding=e) for i, e in enumerate(encoded)], model=result.model,
            usage=p.EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens))

    # Runtime API --------------------------------------------------------------------------------
    async def status(self) -> dict | Failure:
        try:
            return await self._off_loop(self.runtime.status)
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)

    async def load(self, req: p.LoadRequest) -> dict | Failure:
        try:
            keep_alive = keep_alive_seconds(req.keep_alive)
            return await self._off_loop(lambda: self.runtime.load(req.model, backend=req.backend,
                                                                  keep_alive=keep_alive))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)

    async def unload(self, req: p.UnloadRequest) -> dict | Failure:
        try:
            results = await self._off_loop(lambda: self.runtime.unload(req.model, backend=req.backend))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
        return {"model": req.model, "results": results}
