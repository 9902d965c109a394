"""`%anomaly EXPR [--fit NAME] [--model NAME] [--contamination C] [--column NAME] ...`: anomaly scores per row.

Without --model the detector is fitted on EXPR and scores EXPR in one go; with --fit NAME it is kept
under NAME for later data, otherwise it is kept under a temporary name and deleted once scored (so
the same code serves the local runtime and --server). --model NAME scores EXPR with a kept detector.

EXPR is a DataFrame (non-numeric columns one-hot encoded), a numeric Series or array, a list of rows, or texts (a Series
or list of strings: text mode, over an embedding model's vectors). The result is a Series
"anomaly_score" (0..1, higher = more anomalous) aligned with the input's index; --column NAME writes
it (and NAME_is_anomaly) into the DataFrame instead. Missing texts get NaN with a one-line count;
missing numbers are an error (the runtime says how many, and where).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .common import check_name, user_errors
from .dask_rows import is_dask, run_lazy
from .rows import column_target, deliver, evaluate, parse, read_texts, require_pandas, store_column, warn_missing

_OPTIONS_WITH_VALUE = {"--fit", "--model", "-m", "--contamination", "--column", "--backend", "--embedding-model",
                       "--out"}
_FLAGS = {"--server"}


@magic_arguments("anomaly")
@argument("expr", nargs="*", help="a DataFrame of numeric columns, a text Series (df.text), a list or an array")
@argument("--fit", default=None, metavar="NAME", help="keep the detector fitted on EXPR under NAME")
@argument("-m", "--model", default=None, metavar="NAME", help="score EXPR with the detector kept under NAME")
@argument("--contamination", default=0.1, type=float, metavar="C",
          help="the share of rows expected to be anomalies, in (0, 0.5]: sets the threshold (default 0.1)")
@argument("--backend", default="isolation_forest",
          help="isolation_forest (default), local_outlier_factor, one_class_svm (scikit-learn), ecod, copod, "
               "hbos (pyod)")
@argument("--embedding-model", default=None, metavar="M", help="texts: the embedding model (default: all-minilm-l6-v2)")
@argument("--column", default=None, metavar="NAME",
          help="add the scores as column NAME (and NAME_is_anomaly) of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the scores in VAR")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Score anomalies: a Series "anomaly_score" (0..1, higher = more anomalous) aligned with the input's index."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%anomaly")
    return user_errors(run_anomaly)(magics.runtime_for(args.server), magics.shell, expr, args)


def _rows(value, pd):
    """(data for the runtime, pandas index or None, positions with data, number of rows, is text)."""
    if isinstance(value, pd.DataFrame):  # non-numeric columns are one-hot encoded (tasks/anomaly_columns.py)
        return value, value.index, None, len(value), False
    is_text = (isinstance(value, pd.Series) and not pd.api.types.is_numeric_dtype(value.dtype)) or (
        isinstance(value, (list, tuple)) and any(isinstance(item, str) for item in value))
    if is_text or isinstance(value, str):
        items, index, present = read_texts(value, "%anomaly")
        return [items[i] for i in present], index, present, len(items), True
    if isinstance(value, pd.Series):
        return value, value.index, None, len(value), False
    if isinstance(value, (np.ndarray, list, tuple)):
        return value, None, None, len(value), False
    raise UsageError(f"%anomaly takes a DataFrame, a Series, an array or a list, not {type(value).__name__}")


def run_anomaly(runtime, shell, expr: str, args):
    check_name("--out", args.out)
    if args.model and args.fit:
        raise UsageError("%anomaly: --fit NAME fits a new detector, --model NAME uses a kept one; give one of them")
    if args.model and (args.backend != "isolation_forest" or args.contamination != 0.1 or args.embedding_model):
        raise UsageError("%anomaly: --backend, --contamination and --embedding-model apply when fitting; "
                         "--model NAME scores with the detector as it was fitted")
    pd = require_pandas()
    value = evaluate(shell, expr, "%anomaly")
    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return _score_lazily(runtime, shell, expr, value, args)
    frame = None
    if args.column:
        frame = value if isinstance(value, pd.DataFrame) else column_target(shell, expr)
    if isinstance(value, pd.DataFrame):
        value = _without_own_columns(value, args.column)
    data, index, present, n_rows, is_text = _rows(value, pd)

    started = time.perf_counter()
    name = args.model or args.fit or f"magic-{uuid.uuid4().hex}"
    # a server without the runtime API is refused by anomaly_fit, with the reason
    replaced = bool(args.fit) and getattr(runtime, "has_runtime_api", True) and any(
        d.name == args.fit for d in runtime.anomaly_models())
    if not args.model:
        runtime.anomaly_fit(name, data, backend=args.backend, contamination=args.contamination,
                            model=args.embedding_model)
    try:
        result = runtime.anomaly_score(name, data)
    finally:
        if not (args.model or args.fit):
            runtime.anomaly_delete(name)
    elapsed = time.perf_counter() - started

    scores = np.full(n_rows, np.nan)
    flags = np.zeros(n_rows, dtype=bool)
    positions = present if present is not None else range(n_rows)
    scores[list(positions)] = result.scores
    flags[list(positions)] = result.is_anomaly
    series = pd.Series(scores, index=index if index is not None else pd.RangeIndex(n_rows), name="anomaly_score")

    if is_text:
        warn_missing(n_rows - len(present), n_rows, "their anomaly score is NaN")
    where = f" ({runtime.where})" if runtime.where != "local" else ""
    kept = f" \u00b7 kept as {args.fit!r}" if args.fit else ""
    if replaced:
        kept += " (replacing the detector fitted before under that name)"
    print(f"{args.model or args.backend} \u00b7 {n_rows} row{'s' * (n_rows != 1)} \u00b7 "
          f"{int(flags.sum())} anomal{'y' if flags.sum() == 1 else 'ies'} "
          f"(score \u2265 {result.threshold:.3f}){kept} \u00b7 {elapsed:.2f} s{where}")
    if frame is not None:
        store_column(frame, args.column, scores.tolist(), index)
        store_column(frame, f"{args.column}_is_anomaly", flags.tolist(), index)
        frame.attrs[OWN_COLUMNS] = sorted({*frame.attrs.get(OWN_COLUMNS, ()), *_output_columns(args.column)})
    return deliver(shell, series, args.out, frame is not None)


def _score_lazily(runtime, shell, expr: str, value, args):
    """A Dask collection's rows, scored where they are with a kept detector that travels with the graph
    (tasks/anomaly_rows.py): read (its signature checked) here, on this kernel's runtime."""
    from ..tasks import anomaly
    from ..tasks.anomaly_rows import NUMBER_ROWS, TEXT_ROWS
    from . import get_magics

    if not args.model:
        raise UsageError("%anomaly on a Dask collection scores with a kept detector: fit one on a sample "
                         "that fits in memory (%anomaly --fit NAME sample), then %anomaly ddf --model NAME")
    pd = require_pandas()
    frame = None
    if hasattr(value, "columns"):  # a DataFrame: its columns are the data
        texts, frame = False, (value if args.column else None)
        # a cell run again: the columns its first run wrote are its output, not data
        value = _without_own_columns(value, args.column)
        other = [str(c) for c, dtype in value.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
        if other:
            raise UsageError(f"%anomaly takes numeric columns; {', '.join(other)} are not: select them "
                             f"(ddf.select_dtypes('number')) or pass one text column (ddf.text)")
    else:
        texts = not pd.api.types.is_numeric_dtype(value.dtype)
    magics = get_magics(shell)
    fitted = anomaly.load_fitted(magics.local_runtime() if magics is not None else runtime, args.model)
    check = ("embed", fitted["detector"].get("text_model")) if texts else (None, None)
    return run_lazy(TEXT_ROWS if texts else NUMBER_ROWS, shell, expr, value, args, {"fitted": fitted},
                    check=check, report_model=args.model, frame=frame)


#: `DataFrame.attrs` key: the columns that `%anomaly --column` wrote into the frame (pandas copies attrs
#: along with the frame), so that a later run reads them as its output, never as data
OWN_COLUMNS = "universal_kernel.anomaly_columns"


def _output_columns(column: str | None) -> list[str]:
    return [column, f"{column}_is_anomaly"] if column else []


def _without_own_columns(frame, column: str | None):
    """`frame` without the score and flag columns of %anomaly (this run's --column NAME, and those earlier
    runs wrote): a cell run twice reads the same data columns as the first time, not its own output."""
    own = {*getattr(frame, "attrs", {}).get(OWN_COLUMNS, ()), *_output_columns(column)}
    drop = [c for c in frame.columns if c in own]
    return frame.drop(columns=drop) if drop else frame
