"""What the row-wise magics share (`%embed`, `%classify`, `%ner`, ...): splitting EXPR from the options,
reading a Series, list or string into rows with their index, the progress bar, the DataFrame that
`--column` writes to, and `run_rows`: a task's `RowTask` (universal_kernel/row_executor.py) run on
EXPR's rows here in chunks, or lazily on a Dask collection (dask_rows.py)."""

from __future__ import annotations

import os
import shlex
import sys
import time

import numpy as np
from IPython.core.error import UsageError

from ..row_executor import Report, RowTask, Rows, present_rows, run_chunks, table_columns, task_rows
from .common import column_target, drop_comment  # noqa: F401  (column_target: the magics' import)



def split_line(line: str, options_with_value: set[str], flags: set[str]) -> tuple[str, list[str]]:
    """(EXPR, option argv): top-level chunks that are known options go to argparse, the rest is EXPR."""
    chunks, depth, quote, current = [], 0, None, ""
    for ch in drop_comment(line):
        if quote:
            current += ch
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            current += ch
        elif ch in "([{":
            depth += 1
            current += ch
        elif ch in ")]}":
            depth -= 1
            current += ch
        elif ch.isspace() and depth <= 0:
            if current:
                chunks.append(current)
            current = ""
        else:
            current += ch
    if current:
        chunks.append(current)
    expr, argv, i = [], [], 0
    while i < len(chunks):
        chunk = chunks[i]
        name = chunk.split("=", 1)[0]
        if name in options_with_value:
            argv.append(chunk)
            if "=" not in chunk and i + 1 < len(chunks):
                argv.append(chunks[i + 1])
                i += 1
        elif name in flags or (chunk.startswith("--") and chunk[2:3].isalpha()) or chunk in ("-h",):
            argv.append(chunk)
        else:
            expr.append(chunk)
        i += 1
    try:
        argv = [part for chunk in argv for part in shlex.split(chunk)]
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None
    return " ".join(expr), argv


def is_one_item(value) -> bool:
    """One value rather than a collection: a string, a path, bytes, an image (a PIL image, an array of 2 or
    more dimensions; a 1-D array is a list)."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim >= 2
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def read_items(value, magic: str, *, reads: str = "texts", takes: str = "a pandas Series, a list of strings or a "
               "string", example: str = "text") -> tuple[list, object, bool]:
    """(items, pandas index or None, whether EXPR was one value) of what EXPR evaluated to; UsageError for
    anything else. `reads` "texts": one string is one row; "values": any one value (`is_one_item`)."""
    pd = sys.modules.get("pandas")
    if isinstance(value, str) or (reads != "texts" and is_one_item(value)):
        return [value], None, True
    if pd is not None and isinstance(value, pd.DataFrame):
        raise UsageError(f"{magic} takes a column, not a DataFrame: use df.{example} or df['{example}']")
    if pd is not None and isinstance(value, pd.Series):
        return value.tolist(), value.index, False
    if pd is not None and isinstance(value, pd.Index):
        return value.tolist(), None, False
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist(), None, False
    if isinstance(value, (list, tuple)):
        return list(value), None, False
    raise UsageError(f"{magic} takes {takes}, not {type(value).__name__}")


def texts_of(value, magic: str = "%embed") -> tuple[list, object]:
    """(items, pandas index or None) of texts EXPR evaluated to; UsageError for anything else."""
    items, index, _ = read_items(value, magic)
    return items, index


def _progress_bundle(done: int, total: int, elapsed: float) -> dict:
    rate = done / elapsed if elapsed > 0 else 0.0
    width = 30
    filled = int(width * done / total) if total else width
    text = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows \u00b7 {rate:.0f} rows/s \u00b7 {elapsed:.1f} s"
    html = (f'<progress value="{done}" max="{total}" style="width:240px"></progress> '
            f'<span style="font-family:monospace;font-size:90%">{done}/{total} rows \u00b7 {rate:.0f} rows/s '
            f'\u00b7 {elapsed:.1f} s</span>')
    return {"text/plain": text, "text/html": html}


class Progress:
    """A progress bar in the output (a display handle), for inputs long enough to need one."""

    def __init__(self, total: int, show: bool):
        self.total = total
        self.started = time.perf_counter()
        self.handle = None
        self.updates = 0
        if show:
            from IPython.display import display

            self.handle = display(_progress_bundle(0, total, 0.0), raw=True, display_id=True)

    def update(self, done: int) -> None:
        if self.handle is not None:
            self.updates += 1
            self.handle.update(_progress_bundle(done, self.total, time.perf_counter() - self.started), raw=True)


# The task magics' rows (%classify, %ner, %rerank) ---------------------------------------------
def parse(parser, line: str, options_with_value: set[str], flags: set[str], name: str):
    """(EXPR, parsed options): options anywhere on the line, everything else is the expression."""
    expr, argv = split_line(line, options_with_value, flags)
    args = parser.parse_args(argv)
    if args.expr:
        expr = " ".join([expr, *args.expr]).strip()
    if not expr:
        raise UsageError(f"{name} needs an expression: a Series (df.text), a list of strings or a string")
    return expr, args


def evaluate(shell, expr: str, name: str):
    try:
        return shell.ev(expr)
    except Exception as exc:
        raise UsageError(f"{name}: cannot evaluate {expr!r}: {type(exc).__name__}: {exc}") from None


def read_texts(value, name: str) -> tuple[list, object, list[int]]:
    """(items, pandas index or None, positions of the rows with text): None, NaN and blank strings
    have nothing to classify, find or rank, so they are left out (and counted by the caller)."""
    items, index = texts_of(value, name)
    return items, index, present_rows(items, index, magic=name)


def warn_missing(missing: int, total: int, consequence: str, means: str = "missing or empty (None/NaN/'')") -> None:
    if missing:
        print(f"warning: {missing} of {total} values are {means}: {consequence}", file=sys.stderr)


def summary(model_id: str | None, n_rows: int, seconds: float, runtime) -> str:
    where = f" ({runtime.where})" if runtime.where != "local" else ""
    rows_text = f"{n_rows} row" + ("" if n_rows == 1 else "s")
    return f"{model_id or 'default model'} \u00b7 {rows_text} \u00b7 {seconds:.2f} s{where}"


def store_column(frame, name: str, values: list, index) -> None:
    """Write one value per input row into `frame[name]`, aligned on the input's index."""
    pd = require_pandas()
    if index is None or index.equals(frame.index):
        if len(values) != len(frame):
            raise UsageError(f"--column: {len(values)} rows for a DataFrame of {len(frame)}")
        frame[name] = pd.Series(values, index=frame.index, dtype=object if _has_lists(values) else None)
    else:
        frame[name] = pd.Series(values, index=index, dtype=object if _has_lists(values) else None)


def _has_lists(values: list) -> bool:
    return any(isinstance(v, (list, dict)) for v in values)


def deliver(shell, table, out: str | None, stored_in_column: bool):
    """--out stores the table; with --out or --column nothing is echoed (as %embed)."""
    if out:
        shell.user_ns[out] = table
    if out or stored_in_column:
        return None
    return table


def require_pandas():
    try:
        import pandas as pd
    except ImportError:
        raise UsageError("the task magics return DataFrames: pip install pandas") from None
    return pd


# The executor's side in the kernel ------------------------------------------------------------------------
def run_rows(task: RowTask, runtime, shell, expr: str, value, args, options: dict, *, chunk_rows: int | None = None,
             progress_min_rows: int = 512, local_options=None, check: tuple | None = None,
             report_model: str | None = None) -> tuple[object, Report | None]:
    """`task` over the rows of `value` (EXPR evaluated): (what the magic gives, the Report; None on Dask).

    A Dask collection gets a lazy result (dask_rows.py: `check` is the (task, model) the workers are asked
    about, `report_model` the name its report line gives); anything else runs here (`run_here`)."""
    from .dask_rows import is_dask, run_lazy

    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return run_lazy(task, shell, expr, value, args, options, check=check, report_model=report_model), None
    return run_here(task, runtime, shell, expr, value, args, options, chunk_rows=chunk_rows,
                    progress_min_rows=progress_min_rows, local_options=local_options)


def run_here(task: RowTask, runtime, shell, expr: str, value, args, options: dict, *, chunk_rows: int | None = None,
             progress_min_rows: int = 512, local_options=None) -> tuple[object, Report]:
    """`task` over the rows of `value` on `runtime`, in chunks of `chunk_rows` (a progress bar from
    `progress_min_rows` items), with `options` and `local_options()` (what only this side honours, checked
    when it applies); the warning for missing rows and the summary line; `args.column` and `args.out`."""
    column = getattr(args, "column", None)
    frame = column_target(shell, expr, example="df") if column else None
    items, index, one = read_items(value, task.magic, reads=task.reads, takes=task.takes, example=task.example_column)
    present = task_rows(task, items, index)
    if local_options is not None:
        options = {**options, **local_options()}
    size = max(1, chunk_rows if chunk_rows is not None else (task.chunk_rows or len(items) or 1))
    bars = []

    def progress(total: int):
        bars.append(Progress(total, show=total >= progress_min_rows and total > size))
        return bars[-1].update

    started = time.perf_counter()
    outputs, model, counts, distinct = run_chunks(runtime, task, items, present, options, chunk_rows=size,
                                                  progress=progress)
    report = Report(model, len(items), distinct, len(items) - len(present), time.perf_counter() - started,
                    bars[-1].updates if bars else 0, counts)
    warn_missing(report.missing, report.rows, task.missing, task.missing_means)
    print(task.summary(report, runtime) if task.summary is not None
          else summary(report.model, report.rows, report.seconds, runtime))

    rows = Rows(items, outputs, _index(index, len(items)), None, options, runtime, one)
    result = task.local_result(rows) if task.local_result is not None else task.table(rows)
    if frame is not None:
        values = task.columns(rows) if task.columns is not None else {
            name[len(column):]: series.tolist()
            for name, series in table_columns(task.table(rows) if task.local_result else result, column).items()}
        for suffix, by_row in values.items():
            store_column(frame, column + suffix, by_row, index)
    return deliver(shell, result, getattr(args, "out", None), frame is not None), report


def _index(index, n: int):
    """The input's index; for a list, the positions (a pandas RangeIndex when pandas is there)."""
    if index is not None:
        return index
    pd = sys.modules.get("pandas")
    return pd.RangeIndex(n) if pd is not None else range(n)
