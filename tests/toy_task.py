"""A task added the way the registry promises, for tests/test_interface.py: its three parts (runtime,
server, magic) in this one module, and one line in `TASKS` (the test's fixture) naming it.

`count`: each text's token count, on any embedding model.
"""

from __future__ import annotations

from universal_kernel.tasks import TaskCall, texts_input

PATH = "v1/count"


# The runtime part ---------------------------------------------------------------------------
def call(texts, model=None, *, backend="auto", keep_alive=None) -> TaskCall:
    return TaskCall("count", model, {"texts": texts_input(texts)}, backend, keep_alive)


def work(ctx):
    texts = ctx.inputs["texts"]

    def run(instance, emit, cancelled):
        counts = [instance.count_tokens(text) for text in texts]
        ctx.stats.prompt_tokens = sum(counts)
        return {"model": ctx.spec.id, "counts": counts}

    return run


def to_wire(call: TaskCall) -> dict:
    return {"model": call.model, "input": call.inputs["texts"]}


def from_wire(payload: dict, call: TaskCall, stats) -> dict:
    return payload


# The server part ----------------------------------------------------------------------------
def routes():
    from jupyter_server.auth.decorator import authorized
    from tornado import web

    from universal_kernel.server_ext.errors import Failure
    from universal_kernel.server_ext.handlers import BaseHandler
    from universal_kernel.server_ext.serving import parse
    from universal_kernel.server_ext.tasks import TaskRequest, serve

    class CountRequest(TaskRequest):
        input: str | list[str]

    class CountHandler(BaseHandler):
        @web.authenticated
        @authorized
        async def post(self):
            req = parse(CountRequest, self.request.body)
            if isinstance(req, Failure):
                return self.send_failure(req)
            self.send(await serve(self.serving.runtime, lambda: call(req.input, req.model), lambda result: result))

    return [(rf"universal/{PATH}/?", CountHandler)]


# The magic ----------------------------------------------------------------------------------
def magic(magics, line: str):
    """%count EXPR: each text's token count on the default embedding model."""
    from universal_kernel.magics.common import user_errors

    runtime = magics.runtime_for(False)
    return user_errors(lambda: runtime.run(call(magics.shell.ev(line)))["counts"])()
