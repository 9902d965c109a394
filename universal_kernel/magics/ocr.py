"""`%ocr EXPR [--boxes] [--column NAME] [-m M] [--server] [--out VAR]`: the text of images and PDFs.

EXPR is a path (any file the kernel can read, `~` expanded; a relative one from the notebook's folder,
then the model folders), the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array, or a list or
Series of them. The result is text: a str for one input, a Series of texts aligned
with the input's index for a list or Series; a PDF's pages are joined by a form feed ("\\f"). With
`--boxes`, a DataFrame `row, page, x1, y1, x2, y2, text, confidence` (one row per line read, `row` =
the input's index). Missing values (None/NaN) give empty text.
"""

from __future__ import annotations

from IPython.core.magic_arguments import argument, magic_arguments

from ..tasks.ocr_rows import BOX_ROWS, OCR_CHUNK_ROWS, TEXT_ROWS
from .common import check_name, user_errors
from .rows import evaluate, parse, run_rows

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


def run_ocr(runtime, shell, expr: str, args, *, chunk_rows: int = OCR_CHUNK_ROWS,
            progress_min_rows: int = OCR_PROGRESS_MIN_ROWS):
    check_name("--out", args.out)
    value = evaluate(shell, expr, "%ocr")
    return run_rows(BOX_ROWS if args.boxes else TEXT_ROWS, runtime, shell, expr, value, args,
                    {"model": args.model, "boxes": args.boxes}, chunk_rows=chunk_rows,
                    progress_min_rows=progress_min_rows)[0]
