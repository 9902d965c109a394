"""What the row-wise magics share (`%embed`, `%classify`, `%ner`, ...): splitting EXPR from the options,
reading a Series, list or string into rows with their index, missing values, the progress bar, and the
DataFrame that `--column` writes to."""

from __future__ import annotations

import math
import re
import shlex
import sys
import time

import numpy as np
from IPython.core.error import UsageError

from .common import drop_comment

_COLUMN_EXPR = re.compile(r"^(?P<frame>.+?)\s*(?:\.\s*(?P<attr>[A-Za-z_]\w*)|\[\s*(?P<q>['\"])(?P<key>.+?)(?P=q)\s*\])$",
                          re.S)


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


def is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def texts_of(value, magic: str = "%embed") -> tuple[list, object]:
    """(items, pandas index or None) of what EXPR evaluated to; UsageError for anything else."""
    pd = sys.modules.get("pandas")
    if isinstance(value, str):
        return [value], None
    if pd is not None and isinstance(value, pd.DataFrame):
        raise UsageError(f"{magic} takes a column, not a DataFrame: use df.text or df['text']")
    if pd is not None and isinstance(value, pd.Series):
        return value.tolist(), value.index
    if pd is not None and isinstance(value, pd.Index):
        return value.tolist(), None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist(), None
    if isinstance(value, (list, tuple)):
        return list(value), None
    raise UsageError(f"{magic} takes a pandas Series, a list of strings or a string, not {type(value).__name__}")


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


def column_target(shell, expr: str, frame_type=None, example: str = "df"):
    """The DataFrame that `--column` writes into: EXPR must be one of its columns. `frame_type` is the kind
    of frame expected (a pandas DataFrame unless given: the Dask magics pass theirs)."""
    match = _COLUMN_EXPR.match(expr.strip())
    if not match:
        raise UsageError(f"--column needs EXPR to be a DataFrame column: {example}.text or {example}['text']")
    try:
        frame = shell.ev(match.group("frame"))
    except Exception as exc:
        raise UsageError(f"cannot evaluate {match.group('frame')!r}: {type(exc).__name__}: {exc}") from None
    if frame_type is None:
        pd = sys.modules.get("pandas")
        frame_type = pd.DataFrame if pd is not None else ()
    if not isinstance(frame, frame_type):
        raise UsageError(f"--column needs EXPR to be a DataFrame column; {match.group('frame')} is a "
                         f"{type(frame).__name__}")
    return frame


#: rows per runtime call: large enough to batch well, small enough for the progress bar to move
CHUNK_ROWS = 256


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
