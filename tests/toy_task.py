"""A task family added the way the registry promises, for tests/test_interface.py: every part of it in this
one module, and one line in `TASKS` (the test's fixture) naming it. Nothing of the package is edited.

`count`: each text's token count, on any embedding model, at most `toy_count_limit` texts a call.
- the runtime part: `call`, `work`, its own setting (`SETTINGS`) and its method (`rt.count(...)`, on
  every runtime: the kernel's, a server's over HTTP);
- its wire schema (`CountRequest`, `CountResponse`): the server parses and answers with it, the HTTP
  client builds and reads with it (`to_wire`, `from_wire`);
- the server part: `routes()` (universal/v1/count) and `door_routes()` (the compatibility door's root);
- its row function (`ROWS`): the rows of a pandas Series in the kernel, or of a Dask Series lazily;
- its magic: `%count EXPR [-m M] [--column NAME] [--out VAR]`.
"""

from __future__ import annotations

from IPython.core.magic_arguments import argument, magic_arguments
from pydantic import BaseModel

from universal_kernel.errors import InvalidRequest
from universal_kernel.row_executor import Chunk, Rows, RowTask
from universal_kernel.settings import RUNTIME, SERVER, Setting
from universal_kernel.tasks import TaskCall, texts_input
from universal_kernel.tasks.wire_base import TaskRequest, TaskUsage, new_id, read_response

PATH = "v1/count"
SETTINGS = (Setting("toy_count_limit", "int", 1000, "The most texts one %count call takes.",
                    env="UNIVERSAL_KERNEL_TOY_COUNT_LIMIT", where={RUNTIME, SERVER}),)


# The runtime part ---------------------------------------------------------------------------
def call(texts, model=None, *, backend="auto", keep_alive=None) -> TaskCall:
    return TaskCall("count", model, {"texts": texts_input(texts)}, backend, keep_alive)


def work(ctx):
    texts = ctx.inputs["texts"]
    limit = ctx.runtime.config.toy_count_limit
    if len(texts) > limit:
        raise InvalidRequest(f"count takes at most {limit} texts a call (toy_count_limit), not {len(texts)}",
                             param="input")

    def run(instance, emit, cancelled):
        counts = [instance.count_tokens(text) for text in texts]
        ctx.stats.prompt_tokens = sum(counts)
        return {"model": ctx.spec.id, "counts": counts}

    return run


def count(runtime, texts, model=None):
    """Each text's token count, in input order."""
    return runtime.run(call(texts, model))["counts"]


# The wire schema ----------------------------------------------------------------------------
class CountRequest(TaskRequest):  # model, backend, keep_alive come with it
    input: str | list[str]


class CountResponse(BaseModel):
    id: str
    model: str
    counts: list[int]
    usage: TaskUsage


def to_wire(call: TaskCall) -> dict:
    return CountRequest.of(call, input=call.inputs["texts"]).body()


def from_wire(payload: dict, call: TaskCall, stats) -> dict:
    answer = read_response(CountResponse, payload, call.task)
    return {"model": answer.model, "counts": answer.counts}


# The server part ----------------------------------------------------------------------------
async def _serve(serving, req: CountRequest):
    from universal_kernel.server_ext.tasks import serve

    return await serve(serving.runtime, lambda: call(req.input, req.model, backend=req.backend,
                                                     keep_alive=req.keep_alive),
                       lambda result: CountResponse(id=new_id("count"), model=result["model"], counts=result["counts"],
                                                    usage=TaskUsage.of(sum(result["counts"]))))


def routes():
    from universal_kernel.server_ext.tasks import post_handler

    return [(rf"universal/{PATH}/?", post_handler(CountRequest, _serve))]


def door_routes():
    from universal_kernel.server_ext.upstream.base import upstream_post_handler

    return [(r"v1/count/?", upstream_post_handler(CountRequest, _serve))]


# The rows -----------------------------------------------------------------------------------
def count_chunk(runtime, texts, model=None) -> Chunk:
    return Chunk(runtime.count(texts, model), model)


def count_table(rows: Rows):
    import pandas as pd

    return pd.Series([float("nan") if n is None else float(n) for n in rows.outputs], index=rows.index,
                     name=rows.name, dtype="float64")


ROWS = RowTask("%count", task="count", run=count_chunk, table=count_table, missing="their count is NaN")


# The magic ----------------------------------------------------------------------------------
@magic_arguments("count")
@argument("expr", nargs="*", help="a Series (df.text), a list of strings, or one string")
@argument("-m", "--model", default=None, help="an embedding model (default: the runtime's)")
@argument("--column", default=None, metavar="NAME", help="add the counts as column NAME of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the result in VAR")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line: str):
    """%count EXPR: each text's token count, a Series on the input's index (lazy on a Dask Series)."""
    from universal_kernel.magics.common import user_errors
    from universal_kernel.magics.rows import evaluate, parse, run_rows

    def run_count():
        expr, args = parse(magic.parser, line, {"-m", "--model", "--column", "--out"}, {"--server"}, "%count")
        value = evaluate(magics.shell, expr, "%count")
        return run_rows(ROWS, magics.runtime_for(args.server), magics.shell, expr, value, args,
                        {"model": args.model}, check=("count", args.model))[0]

    return user_errors(run_count)()
