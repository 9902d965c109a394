"""The Responses API (`POST {base_url}universal/v1/responses`), stateless, on top of chat completions.

A request is read into a chat completion request (`to_chat`): `instructions` becomes the system
message, `input` items become messages (`function_call` and `function_call_output` items become
assistant tool calls and tool messages), `text.format` becomes `response_format` and function tools
become chat tools. The chat renderer's output is then written as a Response object, or as the
official client's stream events (`ResponsesRenderer`). Nothing is stored: `store: true` and
`previous_response_id` are refused.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Union

from pydantic import BaseModel, ConfigDict, Field

from . import protocol as p
from .errors import Failure, failure


class ResponsesRequest(p._Request):
    model: str | None = None
    input: Union[str, list[Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    conversation: Any = None
    top_logprobs: int | None = None
    # extensions, as on chat completions
    seed: int | None = None
    stop: str | list[str] | None = None
    top_k: int | None = Field(default=None, ge=p.INT32_MIN, le=p.INT32_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    keep_alive: p.KeepAlive = None
    backend: str = "auto"


class ResponseObject(BaseModel):
    """A Response (`object: "response"`): its fields as `ResponsesRenderer._response` writes them."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "response"


class ResponseEvent(BaseModel):
    """One event of a Responses stream: `type`, `sequence_number` and the type's own fields."""

    model_config = ConfigDict(extra="allow")
    type: str
    sequence_number: int


def _refused(req: ResponsesRequest) -> Failure | None:
    if req.store:
        return failure(400, "this server stores no responses (it is stateless): send store false or leave it out",
                       param="store", code="unsupported_parameter")
    if req.previous_response_id:
        return failure(400, "this server stores no responses, so previous_response_id cannot be used: send the "
                            "whole conversation as input", param="previous_response_id", code="unsupported_parameter")
    if req.background:
        return failure(400, "background responses are not supported", param="background", code="unsupported_parameter")
    if req.conversation is not None:
        return failure(400, "conversations are not stored here: send the whole conversation as input",
                       param="conversation", code="unsupported_parameter")
    if req.top_logprobs:
        return failure(400, "logprobs are not supported", param="top_logprobs", code="unsupported_parameter")
    return None


def _text(content: Any, where: str) -> str | Failure:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text") \
                    and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                return failure(400, f"{where}: only text parts (input_text, output_text) are supported",
                               param=where, code="unsupported_parameter")
        return "".join(parts)
    return failure(400, f"{where} must be a string or a list of text parts", param=where, code="invalid_value")


def _messages(req: ResponsesRequest) -> list[dict] | Failure:
    messages: list[dict] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        return messages
    for i, item in enumerate(req.input):
        where = f"input.{i}"
        if not isinstance(item, dict):
            return failure(400, f"{where} must be an object", param=where, code="invalid_value")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                return failure(400, f"{where}.role must be user, assistant, system or developer",
                               param=f"{where}.role", code="invalid_value")
            text = _text(item.get("content"), f"{where}.content")
            if isinstance(text, Failure):
                return text
            messages.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id")), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            output = output if isinstance(output, str) else json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id")), "content": output})
        elif kind == "reasoning":
            continue
        else:
            return failure(400, f"{where}: input items of type {kind!r} are not supported", param=where,
                           code="unsupported_parameter")
    return messages


def to_chat(req: ResponsesRequest) -> p.ChatCompletionRequest | Failure:
    """The chat completion request that answers a Responses request."""
    refused = _refused(req)
    if refused:
        return refused
    messages = _messages(req)
    if isinstance(messages, Failure):
        return messages
    body: dict[str, Any] = {"messages": messages, "stream": req.stream, "max_tokens": req.max_output_tokens}
    for name in ("model", "temperature", "top_p", "seed", "stop", "top_k", "min_p", "repeat_penalty", "backend",
                 "parallel_tool_calls"):
        body[name] = getattr(req, name)
    body["keep_alive"] = req.keep_alive
    fmt = (req.text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return failure(400, "text.format.type must be text, json_object or json_schema", param="text.format",
                       code="invalid_value")
    if req.tools:
        body["tools"] = [{"type": t.get("type"), "function": {k: t.get(k) for k in ("name", "description", "parameters")
                                                              if k in t}} if isinstance(t, dict) else t
                         for t in req.tools]
    choice = req.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    body["tool_choice"] = choice
    try:
        return p.ChatCompletionRequest.model_validate(body)
    except Exception as exc:  # noqa: BLE001 - the fields were validated once already
        return failure(400, str(exc).splitlines()[0], code="invalid_value")


# Writing the answer -----------------------------------------------------------------------------------
def _message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


class ResponsesRenderer:
    """A chat renderer's answer as a Response object, or as the Responses stream events."""

    #: the handler names each SSE event by its type and sends no `[DONE]`, as OpenAI does
    sse_event_names = True

    def __init__(self, chat, req: ResponsesRequest):
        self.chat = chat
        self.job = chat.job
        self.req = req
        self.id = p.new_id("resp").replace("-", "_")
        self.seq = 0

    def _response(self, status: str, output: list[dict], usage: p.Usage | None = None, error: dict | None = None,
                  incomplete: str | None = None) -> dict:
        req = self.req
        text = "".join(part["text"] for item in output if item["type"] == "message" for part in item["content"])
        body = {
            "id": self.id, "object": "response", "created_at": self.job.created, "status": status,
            "model": self.job.model_id or (req.model or ""), "output": output, "output_text": text,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "tools": req.tools or [],
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "parallel_tool_calls": False, "previous_response_id": None, "store": False, "metadata": {},
            "text": req.text or {"format": {"type": "text"}}, "truncation": "disabled", "usage": None,
        }
        if usage is not None:
            body["usage"] = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                             "total_tokens": usage.total_tokens, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens_details": {"reasoning_tokens": 0}}
        return body

    def _event(self, type_: str, **fields) -> ResponseEvent:
        event = ResponseEvent(type=type_, sequence_number=self.seq, **fields)
        self.seq += 1
        return event

    def _output(self, completion: p.ChatCompletion) -> list[dict]:
        output = []
        for choice in completion.choices[:1]:
            message = choice.message
            if message.content:
                output.append(_message_item(p.new_id("msg").replace("-", "_"), message.content))
            for call in message.tool_calls or []:
                output.append(_call_item(p.new_id("fc").replace("-", "_"), call.id, call.function.name,
                                         call.function.arguments))
        return output

    async def collect(self) -> BaseModel | Failure:
        completion = await self.chat.collect()
        if isinstance(completion, Failure):
            return completion
        reason = completion.choices[0].finish_reason if completion.choices else "stop"
        incomplete = "max_output_tokens" if reason == "length" else None
        return ResponseObject.model_validate(self._response("incomplete" if incomplete else "completed",
                                                            self._output(completion), completion.usage,
                                                            incomplete=incomplete))

    async def chunks(self) -> AsyncIterator[BaseModel]:
        yield self._event("response.created", response=self._response("in_progress", []))
        yield self._event("response.in_progress", response=self._response("in_progress", []))
        output: list[dict] = []
        open_item: dict | None = None
        reason = "stop"

        def close():
            item = open_item
            index = len(output) - 1
            if item["type"] == "message":
                text = item["content"][0]["text"]
                yield self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                  content_index=0, text=text, logprobs=[])
                yield self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=item["content"][0])
            else:
                yield self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  arguments=item["arguments"], name=item["name"])
            item["status"] = "completed"
            yield self._event("response.output_item.done", output_index=index, item=item)

        async for chunk in self.chat.chunks():
            if isinstance(chunk, p.ErrorResponse):
                error = chunk.error
                yield self._event("error", code=error.code, message=error.message, param=error.param)
                yield self._event("response.failed", response=self._response(
                    "failed", output, error={"code": error.code or "server_error", "message": error.message}))
                return
            for choice in chunk.choices[:1] if chunk.choices and chunk.choices[0].index == 0 else []:
                delta = choice.delta
                if delta.content:
                    if open_item is None or open_item["type"] != "message":
                        if open_item is not None:
                            for event in close():
                                yield event
                        open_item = _message_item(p.new_id("msg").replace("-", "_"), "", "in_progress")
                        output.append(open_item)
                        yield self._event("response.output_item.added", output_index=len(output) - 1,
                                          item={**open_item, "content": []})
                        yield self._event("response.content_part.added", item_id=open_item["id"],
                                          output_index=len(output) - 1, content_index=0,
                                          part={"type": "output_text", "text": "", "annotations": [],
                                                "logprobs": []})
                    open_item["content"][0]["text"] += delta.content
                    yield self._event("response.output_text.delta", item_id=open_item["id"],
                                      output_index=len(output) - 1, content_index=0, delta=delta.content, logprobs=[])
                for call in delta.tool_calls or []:
                    if call.id:
                        if open_item is not None:
                            for event in close():
                                yield event
                        open_item = _call_item(p.new_id("fc").replace("-", "_"), call.id, call.function.name, "",
                                               "in_progress")
                        output.append(open_item)
                        yield self._event("response.output_item.added", output_index=len(output) - 1,
                                          item=dict(open_item))
                    if call.function is not None and call.function.arguments:
                        open_item["arguments"] += call.function.arguments
                        yield self._event("response.function_call_arguments.delta", item_id=open_item["id"],
                                          output_index=len(output) - 1, delta=call.function.arguments)
                if choice.finish_reason:
                    reason = choice.finish_reason
        if open_item is not None:
            for event in close():
                yield event
        incomplete = "max_output_tokens" if reason == "length" else None
        yield self._event("response.incomplete" if incomplete else "response.completed", response=self._response(
            "incomplete" if incomplete else "completed", output, self.job.usage, incomplete=incomplete))

