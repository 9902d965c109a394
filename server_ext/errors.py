"""Failures as values: an HTTP status, an OpenAI error body and headers.

`failure_from` is the one place where the runtime's typed errors meet HTTP.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from universal_kernel.errors import (
    BackendUnavailable, Busy, Cancelled, GenerationFailed, InvalidRequest, LoadFailed, MemoryBudgetExceeded,
    ModelNotFound, ReferenceRefused, RuntimeFailure, WrongTask,
)

from . import protocol as p

log = logging.getLogger("universal_kernel.server_ext")


@dataclass
class Failure:
    status: int
    body: p.ErrorResponse
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> str:
        # ASCII-escaped by json: a message that quotes a client's text can always be written
        return json.dumps(self.body.model_dump())


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
