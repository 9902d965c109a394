"""Rows through a runtime, the same code in the kernel and on a Dask worker: one executor for every row task.

A row-wise task (`%classify`, `%ner`, ...) declares, in its own module, one `RowTask`: its **row
function** `run(runtime, items, **options) -> Chunk` (one output per item, in order, through the
runtime's public methods only, so the kernel's runtime, a server's `RemoteRuntime` and a Dask worker's
runtime all serve it) and how the outputs become its pandas result (`table`). The executor does the rest:
reading rows (`read_rows`, the one validator), leaving out missing ones, running the distinct ones in
chunks, and, on a Dask collection, `map_partitions(run_partition, task, options)` where each worker finds
its own runtime (`dask_cluster.runtime_here`). The magics' side (progress bar, summary line,
`--column`, `--out`, the lazy report) is `magics/rows.py` and `magics/dask_rows.py`.

A new task adds its row function this way (functions at module level: workers import them by path):

    def count_chunk(runtime, texts, model=None):
        result = runtime.run(call(texts, model))
        return Chunk(result["counts"], result["model"])

    def count_table(rows):          # rows: Rows (items, outputs, index, name, options, runtime)
        import pandas as pd
        return pd.Series([float("nan") if n is None else n for n in rows.outputs], index=rows.index)

    ROWS = RowTask("%count", task="count", run=count_chunk, table=count_table, missing="their count is NaN")

and its magic hands it over: `value, _ = magics.rows.run_rows(ROWS, runtime, shell, expr, value, args,
{"model": args.model})` (pandas in chunks here, lazy on a Dask collection).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import InvalidRequest

#: rows per runtime call: large enough to batch well, small enough for a progress bar to move
CHUNK_ROWS = 256


@dataclass
class Chunk:
    """What a row function returns: one output per item it was given, the model that served them, and
    counts to add up over the chunks (what the summary line reports)."""

    outputs: list
    model: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Rows:
    """Every row of an input (or of a partition) with its output: what a task's `table` shapes."""

    items: Any            # the input values, missing ones included (a list; the frame itself for reads="frame")
    outputs: list         # the row function's output per row; None for a row left out (missing)
    index: Any            # the input's labels (a pandas Index; a RangeIndex for a list)
    name: Any = None      # the input Series' name on Dask (a partition keeps it); None in the kernel
    options: dict = field(default_factory=dict)
    runtime: Any = None   # None when Dask asks for the empty result (`meta`)
    one: bool = False     # EXPR was one value (a string, an image), not a collection


@dataclass(frozen=True)
class RowTask:
    """How one task runs over rows (see the module's docstring)."""

    magic: str                      # the magic's name, in messages: "%classify"
    run: Callable[..., Chunk]       # run(runtime, items, **options): the row function
    table: Callable[[Rows], Any]    # the pandas result of these rows (of a partition, on Dask)
    #: the registry task whose model the Dask workers must serve (None: the workers need no model)
    task: str | None = None
    #: "texts": strings (a Series, list or string); "values": anything but None/NaN (one value or a
    #: collection); "frame": the pandas object itself, every row present (a DataFrame or a numeric Series)
    reads: str = "texts"
    blank_is_missing: bool = True   # '' and whitespace have nothing to read (texts only)
    dedupe: bool = True             # identical items run once (they must be hashable)
    chunk_rows: int | None = CHUNK_ROWS  # items per runtime call; None: one call
    aligned: bool = True            # one result row per input row, on its index; else a long table
    missing: str = "nothing is computed for them"  # what a missing row gets, for the warning
    missing_means: str = "missing or empty (None/NaN/'')"
    #: what a one-line type error says the magic takes, and the column the DataFrame refusal suggests
    takes: str = "a pandas Series, a list of strings or a string"
    example_column: str = "text"
    #: the empty result Dask announces (`meta`); default: `table` of no rows
    meta: Callable[[Rows], Any] | None = None
    #: --column values, {suffix: one value per row}; default: the aligned table's columns (NAME, NAME_<col>)
    columns: Callable[[Rows], dict] | None = None
    #: what the magic gives in the kernel when it is not the table (a matrix, one string)
    local_result: Callable[[Rows], Any] | None = None
    #: what the magic gives for a Dask collection when it is not the lazy table (one of its columns)
    lazy_result: Callable[[Any], Any] | None = None
    #: the summary line in the kernel, from the Report and the runtime; default: model · rows · seconds
    summary: Callable[..., str] | None = None


@dataclass
class Report:
    """What one local run did: the summary line's numbers and the magics' `last_*` counts."""

    model: str | None
    rows: int
    distinct: int
    missing: int
    seconds: float = 0.0
    progress_updates: int = 0
    counts: dict[str, int] = field(default_factory=dict)


# Reading rows: the one validator ------------------------------------------------------------------------
def is_missing(value) -> bool:
    """None, NaN, pd.NA and pd.NaT: a row with nothing to read."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def present_rows(items, labels=None, *, magic: str, reads: str = "texts", blank_is_missing: bool = True) -> list[int]:
    """Positions of the rows with something to read (the one row validator of the kernel, the server's
    clients and the Dask workers); InvalidRequest naming the first row of the wrong type."""
    if reads == "frame":
        return list(range(len(items)))
    present = []
    for i, item in enumerate(items):
        if is_missing(item):
            continue
        if reads == "texts":
            if not isinstance(item, str):
                label = labels[i] if labels is not None else i
                raise InvalidRequest(f"{magic} takes strings; the row at {label!r} is a {type(item).__name__}")
            if blank_is_missing and not item.strip():
                continue
        present.append(i)
    return present


def task_rows(task: RowTask, items, labels=None) -> list[int]:
    """`present_rows` as `task` reads its rows."""
    return present_rows(items, labels, magic=task.magic, reads=task.reads, blank_is_missing=task.blank_is_missing)


def _take(items, positions: list[int]):
    if isinstance(items, list):
        return [items[i] for i in positions]
    return items if len(positions) == len(items) else items.iloc[positions]


# Running rows --------------------------------------------------------------------------------------------
def run_chunks(runtime, task: RowTask, items, present: list[int], options: dict, *, chunk_rows: int | None = None,
               progress: Callable[[int], Callable[[int], None]] | None = None) -> tuple[list, str | None, dict, int]:
    """(output per row, None where missing; the model that served them; summed counts; items run).

    Identical items run once (`task.dedupe`). `progress(total)` is called once with the number of items to
    run and gives the function told, after each chunk, how many have run."""
    outputs: list = [None] * len(items)
    if task.dedupe:
        rows_of: dict = {}  # each distinct item's rows, in order of first appearance
        for i in present:
            rows_of.setdefault(items[i], []).append(i)
        work = list(rows_of.values())
    else:
        work = [[i] for i in present]
    size = chunk_rows if chunk_rows is not None else task.chunk_rows
    size = max(1, size if size else len(work))
    done = progress(len(work)) if progress is not None else None
    model, counts = options.get("model"), {}
    for start in range(0, len(work), size):
        group = work[start:start + size]
        chunk = task.run(runtime, _take(items, [rows[0] for rows in group]), **options)
        model = chunk.model if chunk.model is not None else model
        for name, n in chunk.counts.items():
            counts[name] = counts.get(name, 0) + n
        for rows, output in zip(group, chunk.outputs):
            for i in rows:
                outputs[i] = output
        if done is not None:
            done(start + len(group))
    return outputs, model, counts, len(work)


def run_partition(part, task: RowTask, options: dict, column: str | None = None):
    """On a Dask worker (what `map_partitions` ships): a pandas partition in, its result out, on the
    worker's runtime. With `column`, the --column values of a long-table task instead of its table."""
    from .dask_cluster import runtime_here

    runtime = runtime_here()
    items = part if task.reads == "frame" else part.tolist()
    present = task_rows(task, items, part.index)
    outputs, _, _, _ = run_chunks(runtime, task, items, present, options)
    rows = Rows(items, outputs, part.index, part.name if part.ndim == 1 else None, options, runtime)
    return column_values(task, rows, column) if column is not None else task.table(rows)


def column_values(task: RowTask, rows: Rows, column: str):
    """A long-table task's --column values as a pandas object on the rows' index: a Series named `column`,
    or a DataFrame of `column` and `column_<suffix>`."""
    import pandas as pd

    values = task.columns(rows)
    series = {column + suffix: pd.Series(v, index=rows.index, dtype=object) for suffix, v in values.items()}
    return next(iter(series.values())).rename(column) if len(series) == 1 else pd.DataFrame(series)


def table_columns(table, column: str) -> dict:
    """An aligned table's columns under their --column names: a Series is NAME; a DataFrame's first column
    is NAME, the others NAME_<column> (`label, score` -> topic, topic_score)."""
    if getattr(table, "ndim", 1) == 1:
        return {column: table}
    names = list(table.columns)
    return {(column if k == 0 else f"{column}_{name}"): table[name] for k, name in enumerate(names)}
