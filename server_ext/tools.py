"""Tool calling: `tools` / `tool_choice` on chat completions (and the Responses API).

How it works, on any model (no chat template in the shipped models knows tools):
- The tools are described to the model in a system message (`tools_prompt`), which asks for a call
  as one JSON object `{"name": ..., "arguments": {...}}`. Earlier `assistant` messages with
  `tool_calls` are rendered as those JSON objects, and `tool` messages as user messages that carry
  the call id and the result (`render_messages`): the documented fallback rendering.
- `required` and a named function constrain the output to that object by a grammar built from the
  functions' JSON schemas (`anyOf` over the tools, `name` a constant), so the arguments always parse
  and match the schema. `auto` uses a grammar that allows either such an object or text that does not
  start with `{` (`json_schema_or_text`, GGUF only). `none` sends no tools.
- One call per response: `parallel_tool_calls` false is what every response is (true is accepted and
  still gives at most one call).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from pydantic import BaseModel

from . import protocol as p
from .errors import Failure, failure
from .generation import ChatRenderer, Delta, Failed, collect_texts

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict


@dataclass
class ToolPlan:
    """The tools of one request and how the model may use them."""

    mode: str  # "auto", "required" or "named"
    tools: list[Tool]
    named: str | None = None
    allowed: list[Tool] = field(default_factory=list)  # the tools the grammar allows

    def call_schema(self) -> dict:
        options = [{"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                    "required": ["name", "arguments"]} for tool in self.allowed]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def response_format(self) -> dict:
        kind = "json_schema_or_text" if self.mode == "auto" else "json_schema"
        return {"type": kind, "schema": self.call_schema(), "for": "tools"}  # "for": a refusal names tools


def _tool(entry: Any, where: str) -> Tool | Failure:
    if not isinstance(entry, dict) or entry.get("type", "function") != "function":
        return failure(400, f"{where}: only tools of type 'function' are supported", param=where,
                       code="unsupported_parameter")
    fn = entry.get("function", entry)  # the Responses API puts name and parameters at the top
    if not isinstance(fn, dict):
        return failure(400, f"{where}.function must be an object", param=where, code="invalid_value")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        return failure(400, f"{where}: a function name is 1 to 64 letters, digits, '_' or '-'",
                       param=f"{where}.function.name", code="invalid_value")
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        return failure(400, f"{where}.function.parameters must be a JSON schema object",
                       param=f"{where}.function.parameters", code="invalid_value")
    description = fn.get("description") or ""
    return Tool(name, description if isinstance(description, str) else "", parameters)


def plan_tools(tools: list | None, tool_choice: Any) -> ToolPlan | Failure | None:
    """The request's tool plan; None when the model is to answer in text only (no tools, or `none`)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            return failure(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        return None
    if not isinstance(tools, list):
        return failure(400, "tools must be a list", param="tools", code="invalid_value")
    found: list[Tool] = []
    for i, entry in enumerate(tools):
        tool = _tool(entry, f"tools.{i}")
        if isinstance(tool, Failure):
            return tool
        if any(t.name == tool.name for t in found):
            return failure(400, f"two tools are named {tool.name!r}", param=f"tools.{i}", code="invalid_value")
        found.append(tool)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return ToolPlan(choice, found, allowed=found)
    if isinstance(choice, dict):
        fn = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        name = fn.get("name")
        match = [t for t in found if t.name == name]
        if choice.get("type", "function") == "function" and match:
            return ToolPlan("named", found, named=name, allowed=match)
        return failure(400, f"tool_choice names no function among the tools ({name!r})", param="tool_choice",
                       code="invalid_value")
    return failure(400, "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                        "{'name': ...}}", param="tool_choice", code="invalid_value")


# Rendering the conversation ------------------------------------------------------------------------------
def tools_prompt(plan: ToolPlan) -> str:
    lines = ["You can call these functions (JSON schemas of their arguments):"]
    for tool in plan.tools:
        lines.append(json.dumps({"name": tool.name, "description": tool.description,
                                 "parameters": tool.parameters}, ensure_ascii=False))
    if plan.mode == "named":
        lines.append(f"Call the function {plan.named!r}.")
    elif plan.mode == "required":
        lines.append("Call one of them.")
    lines.append('To call a function, answer with only one JSON object: {"name": <function name>, '
                 '"arguments": <arguments object>}. Otherwise answer in plain text.')
    return "\n".join(lines)


def _call_text(call: Any) -> str:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = fn.get("arguments", "{}")
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        pass
    return json.dumps({"name": fn.get("name"), "arguments": arguments}, ensure_ascii=False)


def render_messages(messages: list[dict], plan: ToolPlan | None) -> list[dict] | Failure:
    """The conversation as plain role/content messages: tool calls and results written as text."""
    out: list[dict] = []
    names: dict[str, str] = {}
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                return failure(400, "tool_calls must be a list of objects", param=f"messages.{i}.tool_calls",
                               code="invalid_value")
            for call in calls:
                fn = call.get("function") if isinstance(call.get("function"), dict) else {}
                names[str(call.get("id"))] = str(fn.get("name"))
            text = "\n".join(_call_text(call) for call in calls)
            content = message.get("content")
            if isinstance(content, str) and content:
                text = content + "\n" + text
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                return failure(400, "a tool message needs its tool_call_id", param=f"messages.{i}.tool_call_id",
                               code="invalid_value")
            content = message.get("content")
            if isinstance(content, list):  # text parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            if not isinstance(content, str):
                return failure(400, "a tool message's content must be text", param=f"messages.{i}.content",
                               code="invalid_value")
            name = names.get(call_id, "a function")
            out.append({"role": "user", "content": f"Result of {name} (call {call_id}):\n{content}"})
        else:
            out.append({k: v for k, v in message.items() if k not in ("tool_calls", "name")} if role else message)
    if plan is not None:
        prompt = tools_prompt(plan)
        if out and isinstance(out[0], dict) and out[0].get("role") in ("system", "developer") \
                and isinstance(out[0].get("content"), str):
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


# Reading the answer -------------------------------------------------------------------------------------
def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


#: the start of a call as the grammar writes it: `{"name": "...", "arguments": `
_CALL_START = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


def call_start(text: str, plan: ToolPlan) -> tuple[str, int] | None:
    """(function name, where its arguments start) once `text` has begun a call of an allowed tool."""
    match = _CALL_START.match(text)
    # the arguments start at their first character, not at white space that more may follow
    if match is None or match.end() == len(text) or match.group(1) not in {t.name for t in plan.allowed}:
        return None
    return match.group(1), match.end()


def call_arguments(text: str, start: int) -> tuple[str, bool]:
    """The arguments' JSON text as the model wrote it, and whether it is complete (a call cut short by
    max_tokens has only its beginning)."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return text[start:].rstrip(), False
    return text[start:end], True


def parse_call(text: str, plan: ToolPlan) -> tuple[p.ToolCall, bool] | None:
    """The tool call a model's answer holds and whether it is complete, or None when it is text.
    `arguments` are the model's own JSON text (so the streamed fragments concatenate to it)."""
    started = call_start(text, plan)
    if started is None:
        return None
    name, start = started
    arguments, complete = call_arguments(text, start)
    return p.ToolCall(id=new_call_id(), function=p.FunctionCall(name=name, arguments=arguments)), complete


def _held_back(arguments: str) -> int:
    """How much of a call's arguments text is safe to stream: not the closing braces and white space at
    its end, which may belong to the wrapper `{"name": ..., "arguments": ...}` rather than the arguments."""
    return len(arguments.rstrip().rstrip("}").rstrip())


class ToolChatRenderer(ChatRenderer):
    """Chat completions whose answer may be a tool call. Text is streamed as it comes unless it may be a
    call (it starts with `{`). A call is streamed as OpenAI's `delta.tool_calls` pieces: index, id and
    name once the model has written the name, then the arguments as they are generated."""

    def __init__(self, job, include_usage: bool, plan: ToolPlan):
        super().__init__(job, include_usage)
        self.plan = plan

    def _answer(self, text: str, reason: str) -> tuple[p.ChatMessage, str]:
        parsed = parse_call(text, self.plan)
        if parsed is None:
            return p.ChatMessage(content=text), reason
        call, complete = parsed
        return p.ChatMessage(content=None, tool_calls=[call]), "tool_calls" if complete else reason

    async def collect(self) -> p.ChatCompletion | Failure:
        collected = await collect_texts(self.job)
        if isinstance(collected, Failure):
            return collected
        choices = []
        for i, (text, reason, _) in collected.items():
            message, reason = self._answer(text, reason)
            choices.append(p.ChatChoice(index=i, message=message, finish_reason=reason))
        return p.ChatCompletion(id=self.job.id, created=self.job.created, model=self.job.model_id,
                                choices=choices, usage=self.job.usage)

    def _args(self, i: int, fragment: str) -> BaseModel:
        return self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(tool_calls=[
            p.ToolCallDelta(index=0, function=p.FunctionCallDelta(arguments=fragment))]))])

    async def chunks(self) -> AsyncIterator[BaseModel]:
        held: dict[int, str] = {}  # per choice: its text so far, while it may be (or is) a call
        mode: dict[int, str] = {}  # per choice: "undecided", "text" or "call"
        start: dict[int, int] = {}  # per call: where its arguments start in held
        sent: dict[int, int] = {}  # per call: characters of its arguments sent
        async for event in self.job.events():
            if isinstance(event, Failed):
                yield event.failure.body
                return
            i = event.index
            if i not in mode:
                mode[i], held[i] = "undecided", ""
                yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(role="assistant", content=""))])
            if isinstance(event, Delta):
                if mode[i] == "text":
                    yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(content=event.text))])
                    continue
                held[i] += event.text
                if mode[i] == "undecided":
                    begun = held[i].lstrip()
                    if begun and not begun.startswith("{"):
                        mode[i], text, held[i] = "text", held[i], ""
                        yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(content=text))])
                        continue
                    started = call_start(held[i], self.plan)
                    if started is None:
                        continue
                    mode[i], start[i], sent[i] = "call", started[1], 0
                    yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(tool_calls=[
                        p.ToolCallDelta(index=0, id=new_call_id(), type="function",
                                        function=p.FunctionCallDelta(name=started[0], arguments=""))]))])
                arguments = held[i][start[i]:]
                safe = _held_back(arguments)
                if safe > sent[i]:
                    yield self._args(i, arguments[sent[i]:safe])
                    sent[i] = safe
                continue
            reason = event.finish_reason
            if mode[i] == "call":
                arguments, complete = call_arguments(held[i], start[i])
                if len(arguments) > sent[i]:
                    yield self._args(i, arguments[sent[i]:])
                reason = "tool_calls" if complete else reason
            elif mode[i] == "undecided" and held[i]:
                yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(content=held[i]))])
            yield self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(), finish_reason=reason)])
        if self.include_usage:
            yield self._chunk([], usage=self.job.usage)
