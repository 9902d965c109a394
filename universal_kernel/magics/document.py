"""`%document EXPR [--tables] [-m M] [--server] [--out VAR]`: a document's structure.

EXPR is a path (any file the kernel can read, `~` expanded; a bare path that is not a Python
expression is taken as written), the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array. The
result is the `Document` (pages -> blocks in reading order, tables, `.markdown()`, `.frame()`), shown
as its Markdown; with `--tables`, the list of its tables as DataFrames.
"""

from __future__ import annotations

import re
import time

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .common import check_name, user_errors
from .rows import deliver, evaluate, is_one_item, parse

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out"}
_FLAGS = {"--server", "--tables"}


@magic_arguments("document")
@argument("expr", nargs="*", help="a path, the bytes of a PNG, JPEG or PDF, a PIL image or an array")
@argument("-m", "--model", default=None, help="the text reader's model, for scanned pages (default: rapidocr)")
@argument("--tables", action="store_true", help="the document's tables, a list of DataFrames")
@argument("--out", default=None, metavar="VAR", help="store the result in VAR")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """A document's blocks, tables and Markdown: the Document (shown as Markdown), or with --tables its tables."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%document")
    return user_errors(run_document)(magics.runtime_for(args.server), magics.shell, expr, args)


#: a bare file name or path with an extension, not a Python expression: `report.pdf`, `~/scans/a-1.png`
_BARE_PATH = re.compile(r"[\w~./\\-]+\.\w+")


def source_of(shell, expr: str):
    """EXPR's value; a bare path (`%document report.pdf`) is taken as that path, found as a quoted one is
    (the runtime resolves it and names it when it is missing)."""
    try:
        return evaluate(shell, expr, "%document")
    except UsageError:
        if _BARE_PATH.fullmatch(expr.strip()):
            return expr.strip()
        raise


def run_document(runtime, shell, expr: str, args):
    check_name("--out", args.out)
    value = source_of(shell, expr)
    if not is_one_item(value):
        raise UsageError(f"%document takes one document (a path, bytes, a PIL image or an array), not a "
                         f"{type(value).__name__}; for several, call rt.document([...])")
    started = time.perf_counter()
    document = runtime.document(value, args.model)
    seconds = time.perf_counter() - started
    where = f" ({runtime.where})" if runtime.where != "local" else ""
    print(f"{args.model or 'rapidocr'} + rapid-layout \u00b7 {len(document.pages)} page"
          f"{'' if len(document.pages) == 1 else 's'} \u00b7 {len(document.blocks)} blocks \u00b7 "
          f"{len(document.tables_found)} tables \u00b7 {seconds:.2f} s{where}")
    result = document.tables if args.tables else document
    return deliver(shell, result, args.out, False)
