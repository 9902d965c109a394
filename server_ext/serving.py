"""The serving layer: OpenAI wire types in, runtime calls, wire types out.

Errors are values here: every public method returns its result or a `Failure` (see errors.py).
Generation returns a renderer over a `GenerationJob` (see generation.py) that the handler primes,
then streams or collects.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import types
import typing
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from universal_kernel.backends import GenerationParams
from universal_kernel.tasks import tasks_of
from universal_kernel.wire import keep_alive_seconds, params_from_wire

from . import protocol as p
from .errors import Failure, failure, failure_from
from .generation import ChatRenderer, CompletionRenderer, GenerationJob, Renderer
from .responses import ResponsesRenderer, ResponsesRequest, to_chat
from .token_ids import decode_token_ids, is_token_ids
from .tools import ToolChatRenderer, plan_tools, render_messages

__all__ = ["Failure", "Serving", "failure", "failure_from", "keep_alive_seconds", "parse"]


#: deeper JSON than this is refused: no OpenAI request nests nearly as deep (a JSON schema a few levels)
MAX_JSON_DEPTH = 64


def _hostile(data: Any) -> tuple[str, str | None] | None:
    """Why a decoded body cannot be served safely, with the parameter at fault, or None.

    Depth: code after parsing recurses over values (pydantic, templates, repr), and Python's stack
    is ~1000 frames. Lone surrogates (`"\\ud800"` is valid JSON) are no text: they cannot be encoded
    for a tokenizer or written back in a response. The walk is iterative and visits each value once.
    """
    stack: list[tuple[Any, int, str | None]] = [(data, 0, None)]
    while stack:
        value, depth, param = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"the request body nests deeper than {MAX_JSON_DEPTH} levels", param
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "the request body holds a string that is not valid Unicode (a lone surrogate)", param
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, depth + 1, param))
                stack.append((item, depth + 1, param if param is not None else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, param) for item in value)
    return None


def parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate a JSON body into a wire type, or a 400 failure naming the bad parameter."""
    try:
        data = json.loads(body or b"")
    except RecursionError:  # the C scanner recurses per level: `{"a":` repeated
        return failure(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    except (ValueError, UnicodeDecodeError) as exc:  # int digits beyond Python's limit are a ValueError too
        return failure(400, f"the request body is not valid JSON: {exc}", code="invalid_json")
    if not isinstance(data, dict):
        return failure(400, "the request body must be a JSON object", code="invalid_json")
    hostile = _hostile(data)
    if hostile is not None:
        message, param = hostile
        return failure(400, message, param=param if isinstance(param, str) else None, code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        loc = ".".join(_wire_path(model, first["loc"])) or None
        return failure(400, f"{loc}: {first['msg']}" if loc else first["msg"], param=loc, code="invalid_value")


def _wire_path(model: type[BaseModel], loc: tuple) -> list[str]:
    """A validation error's location as the client wrote it: without pydantic's union-member tags
    (`keep_alive.float` is `keep_alive`; `stop.list[str].0` is `stop.0`)."""
    parts = [str(part) for part in loc]
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    field = fields.get(parts[0]) if parts else None
    if field is not None and len(parts) > 1:
        members = [arg for arg in typing.get_args(field.annotation) if arg is not type(None)]
        if len(members) > 1 and typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
            del parts[1]
    return parts


# The serving object ---------------------------------------------------------------------------------
#: the most choices one request may ask for (`n`)
MAX_N = 16


def _refuse_unsupported(req: p._Sampling) -> Failure | None:
    if req.n is not None and not 1 <= req.n <= MAX_N:
        return failure(400, f"n must be between 1 and {MAX_N}", param="n", code="invalid_value")
    return None


def _logprobs(req: p._Sampling, top: int | None) -> int | None | Failure:
    """How many top alternatives per token (None: no logprobs). Chat: `logprobs` true and `top_logprobs`;
    completions: `logprobs` as a number."""
    given = req.logprobs
    if isinstance(req, p.ChatCompletionRequest):
        if given not in (None, True, False):
            return failure(400, "logprobs must be true or false", param="logprobs", code="invalid_value")
        if not given:
            if top:
                return failure(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
            return None
        count, param = top or 0, "top_logprobs"
    else:
        if given is None or given is False:
            return None
        if isinstance(given, bool) or not isinstance(given, int):
            return failure(400, "logprobs must be an integer from 0 to 20", param="logprobs", code="invalid_value")
        count, param = given, "logprobs"
    if not 0 <= count <= 20:
        return failure(400, f"{param} must be between 0 and 20", param=param, code="invalid_value")
    return count


def _samples(inputs: list[dict], params: GenerationParams, n: int | None) -> list[dict]:
    """Each input `n` times (choice index = input * n + sample), sample j seeded with seed + j: N different
    but repeatable samples for a given seed (sample 0 is what n=1 gives); unseeded samples are each random."""
    if not n or n == 1:
        return inputs
    out = []
    for given in inputs:
        for j in range(n):
            seed = None if params.seed is None else params.seed + j
            out.append({**given, "params": dataclasses.replace(params, seed=seed)})
    return out


def _params(req: p._Sampling, max_tokens: int | None, response_format: p.ResponseFormat | None) -> GenerationParams:
    fields = req.model_dump(include=set(type(req).model_fields), by_alias=True)
    fmt = None if response_format is None else response_format.model_dump(by_alias=True, exclude_none=True)
    return params_from_wire(fields, max_tokens, fmt)


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
                           tasks=info.get("tasks", []), format=info.get("format"),
                           architecture=info.get("architecture"), size_bytes=info.get("size_bytes"),
                           backends=info.get("backends", []))

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
            return {"id": model_id, "task": spec.task, "tasks": tasks_of(spec), "format": spec.format,
                    "architecture": spec.architecture, "size_bytes": spec.size_bytes, "loaded": bool(loaded),
                    "backends": [e.backend_name for e in loaded]}

        try:
            return self._card(await self._off_loop(find))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)

    # Generation ---------------------------------------------------------------------------------
    async def chat(self, req: p.ChatCompletionRequest) -> Renderer | Failure:
        refused = _refuse_unsupported(req)
        if refused:
            return refused
        plan = plan_tools(req.tools, req.tool_choice)
        if isinstance(plan, Failure):
            return plan
        if plan is not None and req.response_format is not None and req.response_format.type != "text":
            return failure(400, "tools and a response_format cannot be combined", param="response_format",
                           code="unsupported_parameter")
        messages = req.messages
        if plan is not None or any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
                                   for m in messages):
            messages = render_messages(messages, plan)
            if isinstance(messages, Failure):
                return messages
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if plan is None:
            return await self._start(req, [{"messages": messages}], max_tokens, req.response_format, ChatRenderer)
        return await self._start(req, [{"messages": messages}], max_tokens, None,
                                 lambda job, usage: ToolChatRenderer(job, usage, plan),
                                 raw_format=plan.response_format())

    async def responses(self, req: ResponsesRequest) -> ResponsesRenderer | Failure:
        chat_req = to_chat(req)
        if isinstance(chat_req, Failure):
            return chat_req
        chat = await self.chat(chat_req)
        return chat if isinstance(chat, Failure) else ResponsesRenderer(chat, req)

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

    async def _start(self, req, inputs, max_tokens, response_format, renderer, echo=False,
                     raw_format: dict | None = None) -> Renderer | Failure:
        """A renderer over a job that has not started: the caller primes it (see GenerationJob).
        `raw_format`: the runtime's own response_format (a tool call's grammar), in place of the wire's."""
        try:
            params = _params(req, max_tokens, response_format)
            if raw_format is not None:
                params = dataclasses.replace(params, response_format=raw_format)
            logprobs = _logprobs(req, getattr(req, "top_logprobs", None))
            if isinstance(logprobs, Failure):
                return logprobs
            if logprobs is not None:
                params = dataclasses.replace(params, logprobs=logprobs)
            inputs = _samples(inputs, params, req.n)
            job = GenerationJob(self.runtime, req.model, inputs, params, req.backend,
                                req.keep_alive, echo=echo)
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
        include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
        return renderer(job, include_usage)

    # Embeddings ---------------------------------------------------------------------------------
    async def embeddings(self, req: p.EmbeddingRequest) -> p.EmbeddingResponse | Failure:
        texts = [req.input] if isinstance(req.input, str) else req.input
        if is_token_ids(texts):
            texts = await decode_token_ids(texts)
            if isinstance(texts, Failure):
                return texts
        if not texts or not all(isinstance(t, str) for t in texts):
            return failure(400, "input must be a string, a non-empty list of strings, or token ids "
                                "(a list of integers, or a list of such lists)", param="input", code="invalid_value")
        try:
            result = await self.runtime.aembed(texts, req.model, normalize=req.normalize, backend=req.backend,
                                               keep_alive=req.keep_alive)
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
            return await self._off_loop(lambda: self.runtime.load(req.model, backend=req.backend,
                                                                  keep_alive=req.keep_alive))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)

    async def unload(self, req: p.UnloadRequest) -> dict | Failure:
        try:  # the runtime's answer is the body: {model, results}
            return await self._off_loop(lambda: self.runtime.unload(req.model, backend=req.backend))
        except Exception as exc:  # noqa: BLE001
            return failure_from(exc)
