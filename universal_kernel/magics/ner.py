"""`%ner EXPR [-m M] [--column NAME]`: the named entities of each row, as one long DataFrame.

Columns `row, text, label, start, end, score`: `row` is the input's index label, `start`/`end`
character offsets into that row's text. Missing or empty rows have no entities.
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

COLUMNS = ["row", "text", "label", "start", "end", "score"]

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column"}
_FLAGS = {"--server", "--truncate"}


@magic_arguments("ner")
@argument("expr", nargs="*", help="a Series (df.text), a list of strings, or one string")
@argument("-m", "--model", default=None, help="spaCy pipeline or token classifier (default: en-core-web-sm)")
@argument("--column", default=None, metavar="NAME",
          help="add each row's entities (a list of dicts) as column NAME of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the DataFrame in VAR")
@argument("--truncate", action="store_true", help="cut texts longer than the model takes instead of refusing")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Find named entities: a long DataFrame `row, text, label, start, end, score`, row = the input's index."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%ner")
    return user_errors(run_ner)(magics.runtime_for(args.server), magics.shell, expr, args,
                                progress_min_rows=magics.progress_min_rows)


def run_ner(runtime, shell, expr: str, args, *, chunk_rows: int = CHUNK_ROWS, progress_min_rows: int = 512):
    check_name("--out", args.out)
    value = evaluate(shell, expr, "%ner")
    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return for_shell(shell).ner(shell, expr, value, args)
    frame = column_target(shell, expr) if args.column else None
    items, index, present = read_texts(value, "%ner")

    distinct = list(dict.fromkeys(items[i] for i in present))
    started = time.perf_counter()
    found, model_id = {}, args.model
    for part in chunked(distinct, chunk_rows, progress_min_rows):
        result = runtime.ner(part, args.model, truncate=args.truncate)
        model_id = result.model
        found.update(zip(part, result.rows))
    elapsed = time.perf_counter() - started

    pd = require_pandas()
    with_text = set(present)
    row_labels = list(index) if index is not None else list(range(len(items)))
    entities_by_row = [found[item] if i in with_text else [] for i, item in enumerate(items)]
    records = [(row, e.text, e.label, e.start, e.end, e.score)
               for row, entities in zip(row_labels, entities_by_row) for e in entities]
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    # typed even when empty, so `table.start` is always usable as offsets
    table = table.astype({"start": "int64", "end": "int64", "score": "float64"})

    warn_missing(len(items) - len(present), len(items), "they have no entities")
    print(summary(model_id, len(items), elapsed, runtime))
    if frame is not None:
        as_dicts = [[{"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": e.score}
                     for e in entities] for entities in entities_by_row]
        store_column(frame, args.column, as_dicts, index)
    return deliver(shell, table, args.out, frame is not None)
