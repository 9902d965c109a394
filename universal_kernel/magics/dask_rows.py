"""The row-wise magics on a Dask DataFrame or Series: lazy results computed on the cluster.

When EXPR is a Dask collection, a row magic's `RowTask` (universal_kernel/row_executor.py) becomes a lazy
result: `map_partitions(run_partition, task, options)`, where each worker runs the task's row function on
its own runtime (one per worker process, `dask_cluster.runtime_here`) instead of anything being computed
here. The cluster is the one `%runtime use dask` chose, else the current `distributed.Client`; the workers
are asked first whether they have the model, so a missing model is a one-line error now rather than at
`.compute()`. With no client at all the graph still builds, and runs on whichever scheduler computes it.
"""

from __future__ import annotations

from IPython.core.error import UsageError

from ..row_executor import RowTask, Rows, column_values, run_partition, table_columns
from .common import column_target


def is_dask(value) -> bool:
    """A Dask DataFrame or Series (checked without importing dask)."""
    return type(value).__module__.split(".")[0] == "dask" and hasattr(value, "map_partitions")


def run_lazy(task: RowTask, shell, expr: str, value, args, options: dict, *, check: tuple | None = None,
             report_model: str | None = None, frame=None):
    """`task` over a Dask collection, as a lazy result (what the magic gives; --column adds lazy columns).

    `check` is the (registry task, model) every worker must serve (default: the task's, with
    options["model"]; a task of None needs no model), `report_model` the name the report line gives,
    `frame` the DataFrame --column adds to when it is not the one EXPR is a column of."""
    import dask.dataframe as dd

    column, out = getattr(args, "column", None), getattr(args, "out", None)
    if isinstance(value, dd.DataFrame) and task.reads != "frame":
        raise UsageError(f"{task.magic} takes a column, not a DataFrame: use ddf.text or ddf['text']")
    if column and frame is None:
        frame = value if isinstance(value, dd.DataFrame) else column_target(shell, expr, dd.DataFrame, example="ddf")
    check_task, check_model = check if check is not None else (task.task, options.get("model"))
    magics = _magics(shell)
    where = _prepare(magics, check_task, check_model, args)
    _report(report_model or _model_name(magics, check_task, check_model), value, where)

    part = value._meta  # an empty partition: what `meta` is built from
    empty = Rows(part if task.reads == "frame" else [], [], part.index, part.name if part.ndim == 1 else None,
                 options)
    if frame is not None and not task.aligned:  # a long table's --column values: one per row
        meta = column_values(task, empty, column)
        lazy = value.map_partitions(run_partition, task, options, column, meta=meta, token=_token(task))
        for name, part in table_columns(lazy, column).items():
            frame[name] = part
        return _deliver(shell, frame[column], out, True)
    meta = task.meta(empty) if task.meta is not None else task.table(empty)
    lazy = value.map_partitions(run_partition, task, options, meta=meta, clear_divisions=not task.aligned,
                                token=_token(task))
    if frame is not None:
        for name, part in table_columns(lazy, column).items():
            frame[name] = part
    result = task.lazy_result(lazy) if task.lazy_result is not None else lazy
    return _deliver(shell, result, out, frame is not None)


def _token(task: RowTask) -> str:
    """The graph's key names say which task they run (`classify_partition-...` in the dashboard)."""
    return f"{task.magic.lstrip('%')}_partition"


# Where the work goes --------------------------------------------------------------------------------------
def _magics(shell):
    registry = getattr(getattr(shell, "magics_manager", None), "registry", {}) or {}
    return registry.get("UniversalKernelMagics")


def _config(magics):
    if magics is not None:
        return magics.local_runtime().config
    from ..runtime import get_runtime

    return get_runtime().config


def _prepare(magics, task: str | None, model: str | None, args) -> str:
    """Install the workers' runtimes and check the model on them (a task of None needs no model); a phrase
    saying where the work runs."""
    if getattr(args, "server", False):
        raise UsageError("--server does not apply to a Dask collection: it is computed on its Dask cluster")
    from .. import dask_cluster

    client = dask_cluster.current_client(getattr(magics, "dask_client", None))
    if client is None:
        return "lazy; computed by the scheduler you compute it with"
    dask_cluster.install(client, _config(magics))
    if task is None:
        return f"lazy on the Dask cluster at {client.scheduler.address}"
    workers = dask_cluster.check_workers(client, task, model)
    return f"lazy on the Dask cluster at {client.scheduler.address} ({workers} worker{'s' if workers != 1 else ''})"


def _model_name(magics, task: str | None, model: str | None) -> str:
    """The model the workers will use: `model`, else the task's default (the workers' runtimes are installed
    with this runtime's config), named as the eager magics name it."""
    if model or task is None:
        return model or "no model"
    from ..tasks import task_parts

    return task_parts(task).default_model(_config(magics))


def _report(model: str, value, where: str) -> None:
    parts = value.npartitions
    print(f"{model} \u00b7 {parts} partition{'s' if parts != 1 else ''} \u00b7 {where}: "
          f"call .compute() (or .persist()) for the rows")


def _deliver(shell, result, out: str | None, stored: bool):
    if out:
        shell.user_ns[out] = result
    return None if (out or stored) else result
