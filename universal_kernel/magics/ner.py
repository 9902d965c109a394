"""`%ner EXPR [-m M] [--column NAME]`: the named entities of each row, as one long DataFrame.

Columns `row, text, label, start, end, score`: `row` is the input's index label, `start`/`end`
character offsets into that row's text. Missing or empty rows have no entities.
"""

from __future__ import annotations

from IPython.core.magic_arguments import argument, magic_arguments

from ..row_executor import CHUNK_ROWS
from ..tasks.ner_rows import ROWS
from .common import check_name, user_errors
from .rows import evaluate, parse, run_rows

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
    options = {"model": args.model, "truncate": args.truncate}
    return run_rows(ROWS, runtime, shell, expr, value, args, options, chunk_rows=chunk_rows,
                    progress_min_rows=progress_min_rows)[0]
