"""`%ocr EXPR [--boxes] [--column NAME] [-m M] [--server] [--out VAR]`: the text of images and PDFs.

EXPR is a path (any file the kernel can read, `~` expanded; a relative one from the notebook's folder,
then the model folders), the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array, or a list or
Series of them. The result is text: a str for one input, a Series of texts aligned
with the input's index for a list or Series; a PDF's pages are joined by a form feed ("\\f"). With
`--boxes`, a DataFrame `row, page, x1, y1, x2, y2, text, confidence` (one row per line read, `row` =
the input's index). Missing values (None/NaN) give empty text.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .common import check_name, user_errors
from .dask_rows import for_shell, is_dask
from .rows import chunked, column_target, deliver, evaluate, is_missing, parse, require_pandas, store_column, summary, \
    warn_missing

BOX_COLUMNS = ["row", "page", "x1", "y1", "x2", "y2", "text", "confidence"]
PAGE_BREAK = "\f"

#: images per runtime call: an image takes about a second, so small chunks keep the progress bar moving
OCR_CHUNK_ROWS = 4
#: a progress bar from this many images (the row magics' default of 512 rows is minutes of OCR)
OCR_PROGRESS_MIN_ROWS = 8

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column"}
_FLAGS = {"--server", "--boxes"}


@magic_arguments("ocr")
@argument("expr", nargs="*", help="a path, bytes, a PIL image or array, or a list or Series of them")
@argument("-m", "--model", default=None, help="OCR model (default: rapidocr)")
@argument("--boxes", action="store_true",
          help="a DataFrame of the lines read: row, page, x1, y1, x2, y2, text, confidence")
@argument("--column", default=None, metavar="NAME",
          help="add each row's text (with --boxes: its boxes, a list of dicts) as column NAME of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the result in VAR")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Read the text of images and PDFs: a str, a Series of texts, or with --boxes a DataFrame of lines."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%ocr")
    return user_errors(run_ocr)(magics.runtime_for(args.server), magics.shell, expr, args,
                                progress_min_rows=min(magics.progress_min_rows, OCR_PROGRESS_MIN_ROWS))


def _is_one_image(value) -> bool:
    if isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim >= 2  # an image; a 1-D array is a list of paths
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def read_images(value) -> tuple[list, object, bool]:
    """(items, pandas index or None, whether EXPR was one image rather than a collection)."""
    if _is_one_image(value):
        return [value], None, True
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.DataFrame):
        raise UsageError("%ocr takes a column, not a DataFrame: use df.path or df['path']")
    if pd is not None and isinstance(value, pd.Series):
        return value.tolist(), value.index, False
    if isinstance(value, np.ndarray):
        return value.tolist(), None, False
    if isinstance(value, (list, tuple)):
        return list(value), None, False
    raise UsageError(f"%ocr takes a path, bytes, a PIL image, a numpy array, or a list or Series of them, "
                     f"not {type(value).__name__}")


def run_ocr(runtime, shell, expr: str, args, *, chunk_rows: int = OCR_CHUNK_ROWS,
            progress_min_rows: int = OCR_PROGRESS_MIN_ROWS):
    check_name("--out", args.out)
    value = evaluate(shell, expr, "%ocr")
    if is_dask(value):  # lazy, on the cluster: nothing is computed here
        return for_shell(shell).ocr(shell, expr, value, args)
    frame = column_target(shell, expr) if args.column else None
    items, index, one = read_images(value)
    present = [i for i, item in enumerate(items) if not is_missing(item)]

    started = time.perf_counter()
    pages_by_row: dict[int, list] = {i: [] for i in range(len(items))}
    model_id = args.model
    for part in chunked(present, chunk_rows, progress_min_rows):
        result = runtime.ocr([items[i] for i in part], args.model, boxes=args.boxes)
        model_id = result.model
        for page in result.pages:
            pages_by_row[part[page.index]].append(page)
    elapsed = time.perf_counter() - started

    warn_missing(len(items) - len(present), len(items), "their text is empty")
    print(summary(model_id, len(items), elapsed, runtime))
    row_labels = list(index) if index is not None else list(range(len(items)))
    if args.boxes:
        result = _box_table(row_labels, pages_by_row)
        column_values = [[{name: getattr(box, name) for name in BOX_COLUMNS[2:]} | {"page": page.page}
                          for page in pages_by_row[i] for box in page.boxes or []] for i in range(len(items))]
    else:
        texts = [PAGE_BREAK.join(page.text for page in pages_by_row[i]) for i in range(len(items))]
        column_values = texts
        pd = require_pandas() if not one else None
        result = texts[0] if one else pd.Series(texts, index=index, dtype=object)
    if frame is not None:
        store_column(frame, args.column, column_values, index)
    return deliver(shell, result, args.out, frame is not None)


def _box_table(row_labels: list, pages_by_row: dict[int, list]):
    pd = require_pandas()
    records = [(row_labels[i], page.page, box.x1, box.y1, box.x2, box.y2, box.text, box.confidence)
               for i, pages in pages_by_row.items() for page in pages for box in page.boxes or []]
    table = pd.DataFrame.from_records(records, columns=BOX_COLUMNS)
    # typed even when nothing was read, so that `table.x1` is always numeric
    return table.astype({"page": "int64", "x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64",
                         "confidence": "float64"})
