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

_COLUMN_EXPR = re.compile(r"^(?P<frame>.+?)\s*(?:\.\s*(?P<attr>[A-Za-z_]\w*)|\[\s*(?P<q>['\"])(?P<key>.+?)(?P=q)\s*\])$",
                          re.S)


def split_line(line: str, options_with_value: set[str], flags: set[str]) -> tuple[str, list[str]]:
    """(EXPR, option argv): top-level chunks that are known options go to argparse, the rest is EXPR."""
    chunks, depth, quote, current = [], 0, None, ""
    for ch in line:
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


def column_target(shell, expr: str):
    match = _COLUMN_EXPR.match(expr.strip())
    if not match:
        raise UsageError("--column needs EXPR to be a DataFrame column: df.text or df['text']")
    try:
        frame = shell.ev(match.group("frame"))
    except Exception as exc:
        raise UsageError(f"cannot evaluate {match.group('frame')!r}: {type(exc).__name__}: {exc}") from None
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(frame, pd.DataFrame):
        raise UsageError(f"--column needs EXPR to be a DataFrame column; {match.group('frame')} is a "
                         f"{type(frame).__name__}")
    return frame
