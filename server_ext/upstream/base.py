"""What every route of the compatibility door shares: its errors (this server's OpenAI body plus
upstream's FastAPI key, `detail`, the same message, so that a client written for either reads them),
its POST handlers, and its refusals of what upstream takes and this runtime cannot honour.

A task's door routes live with the task (`server_ext/tasks/<task>_upstream.py`, named by the registry's
`upstream` field) and build on this module; door.py mounts them.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from pydantic import BaseModel

from ..base_handler import BaseHandler
from ..errors import Failure, failure
from ..serving import Serving
from ..tasks import post_handler


class _DetailedFailure(Failure):
    def json(self) -> str:
        body = self.body.model_dump()
        return json.dumps({"detail": body["error"]["message"], **body})


class UpstreamErrors:
    """Mixed into a handler: its failures carry upstream's `detail` beside the OpenAI `error`."""

    def send_failure(self, fail: Failure) -> None:
        super().send_failure(_DetailedFailure(fail.status, fail.body, fail.headers))  # type: ignore[misc]


class UpstreamHandler(UpstreamErrors, BaseHandler):
    pass


def upstream_post_handler(request_type: type[BaseModel], answer: Callable[[Serving, Any], Any]) -> type[BaseHandler]:
    """A door's POST route: parse upstream's request, answer with upstream's response or failure."""
    return post_handler(request_type, answer, base=UpstreamHandler, prefix="Upstream")


def unsupported(param: str, message: str) -> Failure:
    return failure(400, message, param=param, code="unsupported_parameter")


def refuse_max_length(value: int | None) -> Failure | None:
    """Upstream cuts texts at `max_length` tokens; here a text over the model's limit is refused unless the
    request asks to truncate it at the model's own limit."""
    if value is None:
        return None
    return unsupported("max_length", "max_length is not supported here: texts longer than the model's limit are "
                                     "refused; send truncate: true to cut them at the model's own limit")
