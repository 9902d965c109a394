"""`%classify EXPR [--labels a,b,c] [-m M] [--column NAME]`: a label and its probability per row.

The result is a DataFrame `label, score` aligned with the input's index; missing or empty rows get
NaN in place.
"""

from __future__ import annotations

import time

from IPython.core.magic_arguments import argument, magic_arguments

from .common import check_name, user_errors
from .dask_rows import for_shell, is_dask
from .rows import (
    CHUNK_ROWS, chunked, column_target, deliver, evaluate, parse, read_texts, require_pandas, store_column, summary,
    warn_missing,
)

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
    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return for_shell(shell).classify(shell, expr, value, args, labels)
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
