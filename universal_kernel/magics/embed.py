"""`%embed EXPR`: one float32 row per input, in input order; NaN rows for missing values.

The distinct texts are embedded in chunks (a progress bar with rows/s shows on long inputs);
the runtime's embedding cache serves texts it has seen, so a second run computes nothing.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from IPython.core.error import UsageError

from . import rows
from .common import check_name
from .dask_rows import for_shell, is_dask
from .rows import Progress, column_target, is_missing, texts_of

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column", "--precision"}
_FLAGS = {"--no-normalize", "--server", "--no-cache"}


def split_line(line: str) -> tuple[str, list[str]]:
    return rows.split_line(line, _OPTIONS_WITH_VALUE, _FLAGS)


def parse_line(line: str, parser):
    """(EXPR, options) of a %embed line."""
    expr, argv = split_line(line)
    args = parser.parse_args(argv)
    if args.expr:
        expr = " ".join([expr, *args.expr]).strip()
    if not expr:
        raise UsageError("%embed needs an expression: a Series (df.text), a list of strings or a string")
    check_name("--out", args.out)
    return expr, args


def run_embed(runtime, shell, expr: str, args, *, model: str | None, chunk_rows: int = 256,
              progress_min_rows: int = 512) -> tuple[object, dict]:
    """Embed what `expr` evaluates to in `shell` on `runtime`: (the value the magic returns, its counts)."""
    try:
        value = shell.ev(expr)
    except Exception as exc:
        raise UsageError(f"cannot evaluate {expr!r}: {type(exc).__name__}: {exc}") from None
    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return for_shell(shell).embed(shell, expr, value, args, model), {"model": model, "dask": True}
    frame = column_target(shell, expr) if args.column else None
    items, index = texts_of(value)
    missing = [i for i, item in enumerate(items) if is_missing(item)]
    for i, item in enumerate(items):
        if not isinstance(item, str) and not is_missing(item):
            label = index[i] if index is not None else i
            raise UsageError(f"%embed takes strings; the row at {label!r} is a {type(item).__name__}")

    options = {}
    if args.no_cache:
        if not runtime.capabilities.embed_cache:
            raise UsageError("%embed --no-cache applies to the in-process runtime; the server keeps its own cache")
        options["cache"] = False
    if args.precision not in (None, "auto"):
        if not runtime.capabilities.embed_precision:
            raise UsageError("%embed --precision applies to the in-process runtime; the server chooses its own")
        options["precision"] = args.precision
    unique = list(dict.fromkeys(item for item in items if isinstance(item, str)))
    chunk = max(1, chunk_rows)
    progress = Progress(len(unique), show=len(unique) >= progress_min_rows and len(unique) > chunk)
    vectors: dict[str, np.ndarray] = {}
    computed = cached = tokens = 0
    model_id = model
    started = time.perf_counter()
    for start in range(0, len(unique), chunk):
        part = unique[start:start + chunk]
        result = runtime.embed(part, model, normalize=not args.no_normalize, **options)
        model_id = result.model
        for text, row in zip(part, result.vectors):
            vectors[text] = row
        computed += result.stats.rows_computed
        cached += result.stats.rows_cached
        tokens += result.prompt_tokens
        progress.update(start + len(part))
    elapsed = time.perf_counter() - started

    dim = next(iter(vectors.values())).shape[0] if vectors else _dimension(runtime, model)
    matrix = np.full((len(items), dim), np.nan, dtype=np.float32)
    for i, item in enumerate(items):
        if isinstance(item, str):
            matrix[i] = vectors[item]
    counts = {"model": model_id, "rows": len(items), "unique": len(unique), "computed": computed,
              "cached": cached, "missing": len(missing), "prompt_tokens": tokens,
              "seconds": elapsed, "progress_updates": progress.updates}
    if missing:
        print(f"warning: {len(missing)} of {len(items)} values are missing (None/NaN): their rows are NaN",
              file=sys.stderr)
    where = runtime.where if runtime.where != "local" else f"{computed} computed, {cached} from cache"
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    print(f"{model_id or 'default model'} \u00b7 {plural(len(items), 'row')} \u00b7 "
          f"{plural(len(unique), 'distinct text')} ({where})"
          f" \u00b7 {elapsed:.2f} s")

    if frame is not None:
        pd = sys.modules["pandas"]
        vectors_by_row = list(matrix)
        if index is None or index.equals(frame.index):
            if len(vectors_by_row) != len(frame):
                raise UsageError(f"--column: {len(vectors_by_row)} rows for a DataFrame of {len(frame)}")
            frame[args.column] = vectors_by_row
        else:
            frame[args.column] = pd.Series(vectors_by_row, index=index)
    if args.out:
        shell.user_ns[args.out] = matrix
    return (matrix if frame is None and not args.out else None), counts


def _dimension(runtime, model) -> int:
    """Width of the model's vectors, for an input with no text at all (all missing, or empty)."""
    return int(runtime.embed(["dimension"], model).vectors.shape[1])
