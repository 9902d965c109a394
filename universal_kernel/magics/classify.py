"""`%classify EXPR [--labels a,b,c] [-m M] [--column NAME]`: a label and its probability per row.

The result is a DataFrame `label, score` aligned with the input's index; missing or empty rows get
NaN in place. The helpers below the magic are shared by `%ner` and `%rerank` (the row-wise task
magics): reading rows, chunking with a progress bar, writing a column, the summary line.
"""

from __future__ import annotations

import sys
import time

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from . import rows
from .common import check_name, user_errors
from .rows import Progress, column_target, is_missing, texts_of

#: rows per runtime call: large enough to batch well, small enough for the progress bar to move
CHUNK_ROWS = 256

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column", "--labels"}
_FLAGS = {"--server", "--truncate"}


@magic_arguments("classify")
@argument("expr", nargs="*", help="a Series (df.text), a list of strings, or one string")
@argument("-m", "--model", default=None,
          help="classifier, spaCy pipeline, or an embedding/chat model for zero-shot (default: all-minilm-l6-v2)")
@argument("--labels", default=None, metavar="a,b,c", help="the labels, comma separated (needed for zero-shot)")
@argument("--column", default=None, metavar="NAME",
          help="add the labels as column NAME (and their scores as NAME_score) of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the DataFrame in VAR")
@argument("--truncate", action="store_true", help="cut texts longer than the model takes instead of refusing")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Classify texts: a DataFrame `label, score` aligned with the input's index; NaN for missing rows."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%classify")
    return user_errors(run_classify)(magics.runtime_for(args.server), magics.shell, expr, args,
                                     progress_min_rows=magics.progress_min_rows)


def run_classify(runtime, shell, expr: str, args, *, chunk_rows: int = CHUNK_ROWS, progress_min_rows: int = 512):
    from ..tasks.classify import labels_input

    # checked before anything is evaluated or loaded: a typo in --labels costs nothing
    labels = labels_input(args.labels) if args.labels is not None else None
    check_name("--out", args.out)
    value = evaluate(shell, expr, "%classify")
    frame = column_target(shell, expr) if args.column else None
    items, index, present = read_texts(value, "%classify")

    texts = [items[i] for i in present]
    distinct = list(dict.fromkeys(texts))
    started = time.perf_counter()
    found, model_id = {}, args.model
    for part in chunked(distinct, chunk_rows, progress_min_rows):
        result = runtime.classify(part, args.model, labels, truncate=args.truncate)
        model_id = result.model
        found.update(zip(part, result.rows))
    elapsed = time.perf_counter() - started

    pd = require_pandas()
    with_text = set(present)
    nan = float("nan")
    labels_by_row = [found[item].label if i in with_text else nan for i, item in enumerate(items)]
    scores_by_row = [found[item].score if i in with_text else nan for i, item in enumerate(items)]
    table = pd.DataFrame({"label": pd.Series(labels_by_row, dtype=object),
                          "score": pd.Series(scores_by_row, dtype="float64")})
    table.index = index if index is not None else pd.RangeIndex(len(items))

    warn_missing(len(items) - len(present), len(items), "their label and score are NaN")
    print(summary(model_id, len(items), elapsed, runtime))
    if frame is not None:
        store_column(frame, args.column, labels_by_row, index)
        store_column(frame, f"{args.column}_score", scores_by_row, index)
    return deliver(shell, table, args.out, frame is not None)


# Shared by the row-wise task magics (%classify, %ner, %rerank) ------------------------------
def parse(parser, line: str, options_with_value: set[str], flags: set[str], name: str):
    """(EXPR, parsed options): options anywhere on the line, everything else is the expression."""
    expr, argv = rows.split_line(line, options_with_value, flags)
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
    present = []
    for i, item in enumerate(items):
        if is_missing(item) or (isinstance(item, str) and not item.strip()):
            continue
        if not isinstance(item, str):
            label = index[i] if index is not None else i
            raise UsageError(f"{name} takes strings; the row at {label!r} is a {type(item).__name__}")
        present.append(i)
    return items, index, present


def chunked(texts: list[str], chunk_rows: int, progress_min_rows: int):
    """The texts in chunks of `chunk_rows`; a progress bar with rows/s when there are many."""
    chunk_rows = max(1, chunk_rows)
    progress = Progress(len(texts), show=len(texts) >= progress_min_rows and len(texts) > chunk_rows)
    for start in range(0, len(texts), chunk_rows):
        part = texts[start:start + chunk_rows]
        yield part
        progress.update(start + len(part))


def warn_missing(missing: int, total: int, consequence: str) -> None:
    if missing:
        print(f"warning: {missing} of {total} values are missing or empty (None/NaN/''): {consequence}",
              file=sys.stderr)


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
