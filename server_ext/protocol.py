"""OpenAI wire types: what clients send and what the server answers, in one module.

Requests ignore fields they do not know (clients send `user`, `metadata`, `store`...), so that
any OpenAI client works; fields that would change the answer and are not implemented are refused
by the serving layer with a 400 naming the parameter.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from universal_kernel.tasks.wire_base import KeepAlive, OmitsUnset, WireRequest, new_id

__all__ = ["KeepAlive", "new_id"]


def now() -> int:
    return int(time.time())


#: the int32 range: values that llama.cpp's C parameters take
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: every request body: unknown fields ignored, no NaN or Infinity (shared with the tasks' wire schemas)
_Request = WireRequest


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


# Errors -------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# Shared request parts ----------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchema(_Request):
    name: str = "response"
    description: str | None = None
    # `schema` shadows a BaseModel attribute: keep the wire name through an alias
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None
    # also accepted: the runtime's own form, {"type": "json_schema", "schema": {...}}
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class _Sampling(_Request):
    """Sampling parameters shared by chat and text completions, with this server's extensions."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)  # OpenAI's range
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: int | None = 1
    logprobs: Any = None
    # extensions, as llama.cpp and Ollama name them
    top_k: int | None = Field(default=None, ge=INT32_MIN, le=INT32_MAX)  # 0 or less: no top-k
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0)
    keep_alive: KeepAlive = None
    backend: str = "auto"


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # one call per answer either way (see tools.py)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = 16  # the OpenAI default for text completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None


class EmbeddingRequest(_Request):
    model: str | None = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    normalize: bool = True  # extension: raw vectors when false (dimensions then only truncates)
    keep_alive: KeepAlive = None
    backend: str = "auto"


class LoadRequest(_Request):
    model: str | None = None
    keep_alive: KeepAlive = None
    backend: str = "auto"


class UnloadRequest(_Request):
    model: str | None = None  # None: every loaded model
    backend: str | None = None


# Responses --------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON string, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    """A part of a streamed chunk: it carries only what changed, so a key whose value is None is left out."""

    @model_serializer(mode="wrap")
    def _only_what_changed(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}


class FunctionCallDelta(Delta):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(Delta):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatMessage(OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("tool_calls",)  # only when calls were made; content is null then
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """A chat choice's `logprobs`: its tokens in order (their strings concatenate to its text)."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """A text completion's legacy `logprobs`."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(Delta):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(_Response):
    """A text completion; streamed chunks have the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class EmbeddingData(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(_Response):
    """An OpenAI model object, with what this server knows about it (`loaded`, `task`, ...)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "universal-kernel"
    loaded: bool = False
    task: str | None = None  # what its files say it is
    tasks: list[str] = Field(default_factory=list)  # every task it serves, its own first
    format: str | None = None
    architecture: str | None = None
    size_bytes: int | None = None
    backends: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
