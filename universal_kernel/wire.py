"""The one contract of the server and its clients: errors, generation parameters and keep_alive.

Errors: which runtime error travels as which OpenAI error.

The runtime raises typed errors (`universal_kernel.errors`). The server extension sends each as an
OpenAI error body `{"error": {"message", "type", "param", "code"}}` with an HTTP status
(`server_ext/errors.py` reads `ERRORS`); a client (`RemoteRuntime`) turns the body back into the
same typed error by its `code` (`error_from_wire`), so `WrongTask`, `Busy` and its `retry_after`
survive the trip. The HTTP status is only a fallback for servers that send no code we know.

Parameters: `params_to_wire` writes `GenerationParams` as OpenAI request fields (the client), and
`params_from_wire` reads them back (the server), so a field added to one side is added to both.
`keep_alive_seconds` reads Ollama's keep_alive (a number or a duration such as "5m").
Nothing here imports a server or HTTP library.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple

from .backends.base import GenerationParams
from .errors import (
    BackendUnavailable, Busy, Cancelled, DiskFull, GatedModel, GenerationFailed, HubUnavailable, InvalidRequest,
    LoadFailed, MemoryBudgetExceeded, ModelNotFound, ModelTooLarge, PullFailed, ReferenceRefused, RuntimeFailure,
    WorkerLost, WrongTask,
)


class WireError(NamedTuple):
    """One typed runtime error on the wire. Unpacks as (error, status, type, code, retry)."""

    error: type[RuntimeFailure]
    status: int
    type: str  # the OpenAI error type
    code: str  # error.code: what a client maps back by
    retry: bool | None  # x-should-retry; None: the client's own rule for the status


#: Most specific first: the first row whose class matches an exception is the one sent.
ERRORS: tuple[WireError, ...] = (
    WireError(ModelNotFound, 404, "invalid_request_error", "model_not_found", False),
    WireError(ReferenceRefused, 400, "invalid_request_error", "model_refused", False),
    WireError(WrongTask, 400, "invalid_request_error", "wrong_model_task", False),
    WireError(InvalidRequest, 400, "invalid_request_error", "invalid_value", False),
    WireError(Busy, 429, "rate_limit_error", "model_busy", True),
    WireError(MemoryBudgetExceeded, 507, "server_error", "memory_budget_exceeded", False),
    WireError(BackendUnavailable, 501, "server_error", "backend_unavailable", False),
    WireError(LoadFailed, 500, "server_error", "load_failed", False),
    WireError(Cancelled, 499, "server_error", "cancelled", None),
    WireError(WorkerLost, 503, "server_error", "model_worker_lost", True),
    WireError(GenerationFailed, 500, "server_error", "generation_failed", None),
    # a pull by Hub id (a repo the Hub lacks is a ModelNotFound above): what failed, so the caller knows what to fix
    WireError(GatedModel, 403, "permission_error", "gated_model", False),
    WireError(ModelTooLarge, 413, "invalid_request_error", "model_too_large", False),
    WireError(DiskFull, 507, "server_error", "insufficient_storage", False),
    WireError(HubUnavailable, 503, "server_error", "hub_unavailable", False),
    WireError(PullFailed, 500, "server_error", "pull_failed", False),
)

#: Codes the server sends for malformed requests without a runtime error behind them
#: (server_ext/serving.py and handlers.py): they are the caller's mistake, an `InvalidRequest`.
REQUEST_CODES = frozenset({"invalid_value", "invalid_json", "unsupported_parameter", "request_too_large"})

#: Codes the server sends that are no runtime error (an unknown route, auth, an unexpected failure): the
#: client keeps them as they are and never guesses a class from their status (a 404 route is no model).
OTHER_CODES = frozenset({"not_found", "invalid_api_key", "forbidden", "internal_error", "runtime_error"})

_BY_CODE: dict[str, type[RuntimeFailure]] = {row.code: row.error for row in ERRORS}
_BY_CODE.update({code: InvalidRequest for code in REQUEST_CODES})

#: When a server sends no code we know (another OpenAI-compatible server), its status decides.
_BY_STATUS: dict[int, type[RuntimeFailure]] = {400: InvalidRequest, 404: ModelNotFound, 413: InvalidRequest,
                                               422: InvalidRequest, 429: Busy}


def wire_error(exc: BaseException) -> WireError | None:
    """The table row an exception is sent as; None for an exception that is not a typed runtime error."""
    for row in ERRORS:
        if isinstance(exc, row.error):
            return row
    return None


def error_class(code: str | None, status: int | None = None) -> type[RuntimeFailure] | None:
    """The runtime error class for an error code, else for an HTTP status; None when neither is known."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code in OTHER_CODES:
        return None
    return _BY_STATUS.get(status) if status is not None else None


def retry_after_seconds(value) -> float | None:
    """Seconds from a `Retry-After` header (seconds or an HTTP date) or a `retry_after` field."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        from datetime import datetime, timezone

        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_from_wire(error: Mapping | None, *, status: int | None = None, headers: Mapping | None = None,
                    default: type[RuntimeFailure] | None = None) -> RuntimeFailure | None:
    """The typed runtime error for an OpenAI error body (`{"message", "type", "param", "code"}`).

    Mapped by `code`, then by `status`; `param` is kept, and a `Busy` keeps `retry_after` (from the
    body's `retry_after`, else the `Retry-After` header). Returns None when nothing maps and no
    `default` is given, so the caller can raise its own error with the status.
    """
    error = error if isinstance(error, Mapping) else {}
    kind = error_class(error.get("code"), status) or default
    if kind is None:
        return None
    message = str(error.get("message") or (f"HTTP {status}" if status else "the server sent an error"))
    param = error.get("param") if isinstance(error.get("param"), str) else None
    if issubclass(kind, Busy):
        retry_after = retry_after_seconds(error.get("retry_after"))
        if retry_after is None and headers is not None:
            retry_after = retry_after_seconds(headers.get("Retry-After"))
        exc = kind(message, retry_after=1.0 if retry_after is None else retry_after)
        if param is not None:
            exc.param = param
        return exc
    return kind(message, param=param)


# Generation parameters ----------------------------------------------------------------------------
#: GenerationParams fields sent as OpenAI request fields of the same name, when set
_SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p",
                    "repeat_penalty")


def params_to_wire(params: GenerationParams) -> dict:
    """The request fields (chat or text completion) that ask a server for `params`."""
    body: dict[str, Any] = {"max_tokens": params.max_tokens}
    for name in _SAMPLING_FIELDS:
        value = getattr(params, name)
        if value is not None and not (name.endswith("_penalty") and name != "repeat_penalty" and not value):
            body[name] = value
    if params.stop:
        body["stop"] = list(params.stop)
    if params.response_format:
        body["response_format"] = params.response_format
    return body


def params_from_wire(fields: Mapping[str, Any], max_tokens: int | None,
                     response_format: Mapping | None = None) -> GenerationParams:
    """GenerationParams from a request's fields (None: not given, the runtime's default applies).

    `response_format` is OpenAI's (`{"type": "json_schema", "json_schema": {"schema": ...}}`) or the
    runtime's own (`{"type": "json_schema", "schema": ...}`).
    """
    given = {name: fields[name] for name in _SAMPLING_FIELDS if fields.get(name) is not None}
    stop = fields.get("stop")
    if stop is not None:
        given["stop"] = [stop] if isinstance(stop, str) else list(stop)
    kind = (response_format or {}).get("type")
    if kind == "json_schema":
        wrapped = response_format.get("json_schema")
        schema = wrapped.get("schema") if isinstance(wrapped, Mapping) else response_format.get("schema")
        if schema is None:
            raise InvalidRequest("response_format json_schema needs a json_schema object",
                                 param="response_format.json_schema")
        given["response_format"] = {"type": "json_schema", "schema": schema}
    elif kind == "json_object":
        given["response_format"] = {"type": "json_object"}
    return GenerationParams(max_tokens=max_tokens, **given)


# keep_alive ---------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Ollama's keep_alive: seconds, or a duration such as "5m", "1h", "-1" (negative: forever)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a number of seconds or a duration like 5m", param="keep_alive")
    if isinstance(value, (int, float)):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # float() of a huge int overflows
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise InvalidRequest(f"keep_alive {str(value)[:40]!r} is not a number of seconds or a duration "
                                 f"like 5m", param="keep_alive")
        number, unit = float(match.group(1)), match.group(2) or "s"
        seconds = number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if not math.isfinite(seconds):
        raise InvalidRequest("keep_alive must be a finite number of seconds (negative: forever)", param="keep_alive")
    return seconds
