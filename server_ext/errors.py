"""Failures as values: an HTTP status, an OpenAI error body and headers.

`failure_from` is the one place where the runtime's typed errors meet HTTP.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from universal_kernel.errors import RuntimeFailure
from universal_kernel.wire import ERRORS

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


# (class, status, type, code, retry) of each typed runtime error: the table the clients map back by
_RUNTIME_ERRORS = ERRORS


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
