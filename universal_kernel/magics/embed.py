"""`%embed EXPR`: one float32 row per input, in input order; NaN rows for missing values.

The distinct texts are embedded in chunks (a progress bar with rows/s shows on long inputs);
the runtime's embedding cache serves texts it has seen, so a second run computes nothing.
"""

from __future__ import annotations

from IPython.core.error import UsageError

from ..tasks.embed_rows import ROWS
from . import rows
from .common import check_name

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

    def local_options() -> dict:  # what only this side honours (a Dask worker embeds as its runtime does)
        options = {}
        if args.no_cache:
            if not runtime.capabilities.embed_cache:
                raise UsageError("%embed --no-cache applies to the in-process runtime; the server keeps its own cache")
            options["cache"] = False
        if args.precision not in (None, "auto"):
            if not runtime.capabilities.embed_precision:
                raise UsageError("%embed --precision applies to the in-process runtime; the server chooses its own")
            options["precision"] = args.precision
        return options

    result, report = rows.run_rows(ROWS, runtime, shell, expr, value, args,
                                   {"model": model, "normalize": not args.no_normalize},
                                   chunk_rows=chunk_rows, progress_min_rows=progress_min_rows,
                                   local_options=local_options)
    if report is None:
        return result, {"model": model, "dask": True}
    return result, {"model": report.model, "rows": report.rows, "unique": report.distinct,
                    "computed": report.counts.get("computed", 0), "cached": report.counts.get("cached", 0),
                    "missing": report.missing, "prompt_tokens": report.counts.get("prompt_tokens", 0),
                    "seconds": report.seconds, "progress_updates": report.progress_updates}
