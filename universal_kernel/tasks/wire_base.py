"""What every task's wire schema (`tasks/<task>_wire.py`) shares: the request fields every task takes,
usage, and reading a response.

A task's schema is written once, here on the kernel's side: the server parses its request and builds
its response with it (`server_ext/tasks/<task>.py`), and the HTTP client (`RemoteRuntime`) builds the
request from the same types and reads the response through them (the task's `to_wire`/`from_wire`),
so a field added on one side is on both. Requests ignore fields they do not know (clients send more
than they need); a response that does not have the schema's shape is a `GenerationFailed` naming what
is wrong, never a pydantic traceback.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_serializer

from ..errors import GenerationFailed, InvalidRequest
from ..wire import keep_alive_seconds

Response = TypeVar("Response", bound=BaseModel)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _keep_alive(value):
    try:
        return keep_alive_seconds(value)
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None


#: Ollama's keep_alive (seconds or a duration such as "5m"), read into seconds; None: not given
KeepAlive = Annotated[Union[float, None], BeforeValidator(_keep_alive)]


class WireRequest(BaseModel):
    """A request body: unknown fields are ignored; NaN and Infinity (JSON extensions that Python's json
    accepts) are no value of any field."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @classmethod
    def build(cls, **fields):
        """The request a client sends (the client's side); a value the schema refuses is an InvalidRequest
        naming its field, as the server would answer."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else None
            raise InvalidRequest(f"{'.'.join(map(str, first['loc'])) or 'the request'}: {first['msg']}",
                                 param=field) from None

    def body(self) -> dict[str, Any]:
        """The JSON body, without the fields left at their defaults: the server reads them with the same type,
        so they mean the same there."""
        return self.model_dump(exclude_defaults=True, by_alias=True)


class TaskRequest(WireRequest):
    """The fields every task's request takes besides its inputs."""

    model: str | None = None  # None: the server's default model for the task
    backend: str = "auto"
    keep_alive: KeepAlive = None
    truncate: bool = False  # long inputs are refused (400) unless the client asks for truncation

    def options(self) -> dict[str, Any]:
        """The keyword arguments of every task module's `call(...)`."""
        return {"backend": self.backend, "keep_alive": self.keep_alive, "truncate": self.truncate}

    @classmethod
    def of(cls, call, **inputs) -> "TaskRequest":
        """The request that sends a task's call (the client's side): its inputs, and the call's model and options."""
        return cls.build(model=call.model, backend=call.backend, keep_alive=call.keep_alive, **inputs)


class OmitsUnset(BaseModel):
    """A response part whose optional keys named in `OMITTED` (a hit's `document`, a row's `boxes`, a message's
    `tool_calls`) are left out when None, as the APIs it follows do, rather than sent as null. Its other None
    fields are sent as null."""

    OMITTED: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        data = handler(self)
        for key in self.OMITTED:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class TaskUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int) -> "TaskUsage":
        return cls(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)  # nothing is generated


def read_response(response_type: type[Response], payload, task: str) -> Response:
    """A server's answer to a call of `task`, read through the task's response type; an answer of another
    shape (a foreign or broken server) is a GenerationFailed naming the first field at fault."""
    try:
        return response_type.model_validate(payload if payload is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise GenerationFailed(f"the server's answer to {task} is not the expected shape: {where}: "
                               f"{first['msg']} ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''})"
                               ) from None
