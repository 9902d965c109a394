"""`%embed EXPR`: one float32 row per input, in input order; NaN rows for missing values.

The distinct texts are embedded in chunks (a progress bar with rows/s shows on long inputs);
the runtime's embedding cache serves texts it has seen, so a second run computes nothing.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
import time

import numpy as np
from IPython.core.error import UsageError

from .core import check_name

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column"}
_FLAGS = {"--no-normalize", "--server"}
_COLUMN_EXPR = re.compile(r"^(?P<frame>.+?)\s*(?:\.\s*(?P<attr>[A-Za-z_]\w*)|\[\s*(?P<q>['\"])(?P<key>.+?)(?P=q)\s*\])$",
                          re.S)


def split_line(line: str) -> tuple[str, list[str]]:
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
        if name in _OPTIONS_WITH_VALUE:
            argv.append(chunk)
            if "=" not in chunk and i + 1 < len(chunks):
                argv.append(chunks[i + 1])
                i += 1
        elif name in _FLAGS or (chunk.startswith("--") and chunk[2:3].isalpha()) or chunk in ("-h",):
            argv.append(chunk)
        else:
            expr.append(chunk)
        i += 1
    try:
        argv = [part for chunk in argv for part in shlex.split(chunk)]
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None
    return " ".join(expr), argv


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def texts_of(value) -> tuple[list, object]:
    """(items, pandas index or None) of what EXPR evaluated to; UsageError for anything else."""
    pd = sys.modules.get("pandas")
    if isinstance(value, str):
        return [value], None
    if pd is not None and isinstance(value, pd.DataFrame):
        raise UsageError("%embed takes a column, not a DataFrame: use df.text or df['text']")
    if pd is not None and isinstance(value, pd.Series):
        return value.tolist(), value.index
    if pd is not None and isinstance(value, pd.Index):
        return value.tolist(), None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist(), None
    if isinstance(value, (list, tuple)):
        return list(value), None
    raise UsageError(f"%embed takes a pandas Series, a list of strings or a string, not {type(value).__name__}")


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


def _column_target(shell, expr: str):
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


def run_embed(magics, line: str, parser):
    expr, argv = split_line(line)
    args = parser.parse_args(argv)
    if args.expr:
        expr = " ".join([expr, *args.expr]).strip()
    if not expr:
        raise UsageError("%embed needs an expression: a Series (df.text), a list of strings or a string")
    check_name("--out", args.out)
    shell = magics.shell
    try:
        value = shell.ev(expr)
    except Exception as exc:
        raise UsageError(f"cannot evaluate {expr!r}: {type(exc).__name__}: {exc}") from None
    frame = _column_target(shell, expr) if args.column else None
    items, index = texts_of(value)
    missing = [i for i, item in enumerate(items) if _is_missing(item)]
    for i, item in enumerate(items):
        if not isinstance(item, str) and not _is_missing(item):
            label = index[i] if index is not None else i
            raise UsageError(f"%embed takes strings; the row at {label!r} is a {type(item).__name__}")

    runtime = magics.runtime_for(args.server)
    model = args.model or magics.embedding_model or None
    unique = list(dict.fromkeys(item for item in items if isinstance(item, str)))
    chunk = max(1, magics.embed_chunk_rows)
    progress = Progress(len(unique), show=len(unique) >= magics.progress_min_rows and len(unique) > chunk)
    vectors: dict[str, np.ndarray] = {}
    computed = cached = tokens = 0
    model_id = model
    started = time.perf_counter()
    for start in range(0, len(unique), chunk):
        part = unique[start:start + chunk]
        result = runtime.embed(part, model, normalize=not args.no_normalize)
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
    magics.last_embedding = {"model": model_id, "rows": len(items), "unique": len(unique), "computed": computed,
                             "cached": cached, "missing": len(missing), "prompt_tokens": tokens,
                             "seconds": elapsed, "progress_updates": progress.updates}
    if missing:
        print(f"warning: {len(missing)} of {len(items)} values are missing (None/NaN): their rows are NaN",
              file=sys.stderr)
    where = "server" if type(runtime).__name__ == "RemoteRuntime" else f"{computed} computed, {cached} from cache"
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    print(f"{model_id or 'default model'} \u00b7 {plural(len(items), 'row')} \u00b7 "
          f"{plural(len(unique), 'distinct text')} ({where})"
          f" \u00b7 {elapsed:.2f} s")

    if frame is not None:
        pd = sys.modules["pandas"]
        rows = list(matrix)
        if index is None or index.equals(frame.index):
            if len(rows) != len(frame):
                raise UsageError(f"--column: {len(rows)} rows for a DataFrame of {len(frame)}")
            frame[args.column] = rows
        else:
            frame[args.column] = pd.Series(rows, index=index)
    if args.out:
        shell.user_ns[args.out] = matrix
    if frame is None and not args.out:
        return matrix
    return None


def _dimension(runtime, model) -> int:
    """Width of the model's vectors, for an input with no text at all (all missing, or empty)."""
    return int(runtime.embed(["dimension"], model).vectors.shape[1])
