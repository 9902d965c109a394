"""The HTTP side of the tasks beyond generate and embed: one module per task (`rerank.py`, ...).

Each holds its wire types, its serving coroutine, a thin handler and `routes()`; the registry
(`universal_kernel.tasks.TASKS`, field `serving`) names the module, and `handlers.routes()` mounts
every one it names, so adding a task needs no edit there. What all of them share lives here: the
request fields every task takes, usage, and `serve` (request -> the task's call -> the runtime ->
a response or a failure).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel
from tornado import web

from universal_kernel.tasks import TaskCall

from .. import protocol as p
from ..errors import Failure, failure_from
from ..handlers import BaseHandler
from ..serving import Serving, parse

Response = TypeVar("Response", bound=BaseModel)


class TaskRequest(p._Request):
    """The fields every task's request takes besides its inputs; unknown fields are ignored."""

    model: str | None = None  # None: the server's default model for the task
    backend: str = "auto"
    keep_alive: p.KeepAlive = None
    truncate: bool = False  # long inputs are refused (400) unless the client asks for truncation

    def options(self) -> dict[str, Any]:
        """The keyword arguments of every task module's `call(...)`."""
        return {"backend": self.backend, "keep_alive": self.keep_alive, "truncate": self.truncate}


class TaskUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int) -> "TaskUsage":
        return cls(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)  # nothing is generated


async def serve(runtime, build_call: Callable[[], TaskCall],
                respond: Callable[[Any], Response]) -> Response | Failure:
    """Build the task's call (its checks raise `InvalidRequest` naming the parameter), run it on the
    runtime without blocking the event loop, and map its typed result to the response; every typed
    runtime error (unknown model, wrong task, busy...) becomes its OpenAI failure."""
    try:
        result = await runtime.arun(build_call())
    except Exception as exc:  # noqa: BLE001 - failures are values here, as in serving.py
        return failure_from(exc)
    return respond(result)


def post_handler(request_type: type[BaseModel], answer: Callable[[Serving, Any], Any]) -> type[BaseHandler]:
    """The thin handler of a task's POST route: authenticate, parse the body into `request_type`, send
    what `await answer(serving, request)` returns (a response or a failure)."""

    class TaskPostHandler(BaseHandler):
        @web.authenticated
        @authorized
        async def post(self, *args):
            req = parse(request_type, self.request.body)
            self.send(req if isinstance(req, Failure) else await answer(self.serving, req))

    name = request_type.__name__.removesuffix("Request") + "Handler"
    TaskPostHandler.__name__ = TaskPostHandler.__qualname__ = name
    return TaskPostHandler


__all__ = ["TaskRequest", "TaskUsage", "post_handler", "serve"]
