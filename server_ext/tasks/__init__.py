"""The HTTP side of the tasks beyond generate and embed: one module per task (`rerank.py`, ...).

Each holds its serving coroutine, a thin handler and `routes()`; its wire schema is the kernel's
(`universal_kernel/tasks/<task>_wire.py`, which the HTTP client reads too). The registry
(`universal_kernel.tasks.TASKS`, field `serving`) names the module, and routes.py mounts every one it
names, so adding a task needs no edit there; a task's routes in the compatibility door's shapes are the
`door_routes()` of its `<task>_upstream.py` (field `upstream`), which upstream/door.py mounts. What all
of them share lives here: `serve` (request -> the task's call -> the runtime -> a response or a
failure), `off_loop` and the thin POST handler.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, TypeVar

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel
from tornado import web

from universal_kernel.tasks import TaskCall
from universal_kernel.tasks.wire_base import TaskRequest, TaskUsage

from ..base_handler import BaseHandler
from ..errors import Failure, failure_from
from ..serving import Serving, parse

Response = TypeVar("Response", bound=BaseModel)


async def serve(runtime, build_call: Callable[[], TaskCall], respond: Callable[[Any], Response], *,
                build_off_loop: bool = False) -> Response | Failure:
    """Build the task's call (its checks raise `InvalidRequest` naming the parameter), run it on the
    runtime without blocking the event loop, and map its typed result to the response; every typed
    runtime error (unknown model, wrong task, busy...) becomes its OpenAI failure. `build_off_loop`:
    building the call takes a while (decoding and checking big files), so it runs in a thread."""
    try:
        if build_off_loop:
            call = await asyncio.get_running_loop().run_in_executor(None, build_call)
        else:
            call = build_call()
        result = await runtime.arun(call)
    except Exception as exc:  # noqa: BLE001 - failures are values here, as in serving.py
        return failure_from(exc)
    return respond(result)


async def off_loop(work: Callable[[], Any]) -> Any:
    """`work()` run in a thread, off the event loop (files, scikit-learn...); typed errors become failures."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, work)
    except Exception as exc:  # noqa: BLE001 - failures are values here, as in serving.py
        return failure_from(exc)


def post_handler(request_type: type[BaseModel], answer: Callable[[Serving, Any], Any],
                 base: type[BaseHandler] = BaseHandler, prefix: str = "") -> type[BaseHandler]:
    """The thin handler of a POST route on `base`: authenticate, parse the body into `request_type`, send
    what `await answer(serving, request)` returns (a response or a failure)."""

    class TaskPostHandler(base):  # type: ignore[misc, valid-type]
        @web.authenticated
        @authorized
        async def post(self, *args):
            req = parse(request_type, self.request.body)
            self.send(req if isinstance(req, Failure) else await answer(self.serving, req))

    name = prefix + request_type.__name__.removesuffix("Request") + "Handler"
    TaskPostHandler.__name__ = TaskPostHandler.__qualname__ = name
    return TaskPostHandler


__all__ = ["TaskRequest", "TaskUsage", "off_loop", "post_handler", "serve"]
