"""`%classify EXPR [--labels a,b,c] [-m M] [--column NAME]`: a label and its probability per row.

The result is a DataFrame `label, score` aligned with the input's index; missing or empty rows get
NaN in place.
"""

from __future__ import annotations

from IPython.core.magic_arguments import argument, magic_arguments

from ..row_executor import CHUNK_ROWS
from ..tasks.classify_rows import ROWS
from .common import check_name, user_errors
from .rows import evaluate, parse, run_rows

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--column", "--labels"}
_FLAGS = {"--server", "--truncate"}


@magic_arguments("classify")
@argument("expr", nargs="*", help="a Series (df.text), a list of strings, or one string")
@argument("-m", "--model", default=None,
          help="classifier, spaCy pipeline, or an embedding/chat model for zero-shot (default: all-minilm-l6-v2)")
@argument("--labels", default=None, metavar="a,b,c", help="the labels, comma separated (needed for zero-shot)")
@argument("--column", default=None, metavar="NAME",
          help="add the labels as column NAME (and their scores as NAME_score) of the DataFrame")
@argument("--out", default=None, metavar="VAR", help="store the DataFrame in VAR")
@argument("--truncate", action="store_true", help="cut texts longer than the model takes instead of refusing")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Classify texts: a DataFrame `label, score` aligned with the input's index; NaN for missing rows."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%classify")
    return user_errors(run_classify)(magics.runtime_for(args.server), magics.shell, expr, args,
                                     progress_min_rows=magics.progress_min_rows)


def run_classify(runtime, shell, expr: str, args, *, chunk_rows: int = CHUNK_ROWS, progress_min_rows: int = 512):
    from ..tasks.classify import labels_input

    # checked before anything is evaluated or loaded: a typo in --labels costs nothing
    labels = labels_input(args.labels) if args.labels is not None else None
    check_name("--out", args.out)
    value = evaluate(shell, expr, "%classify")
    options = {"model": args.model, "labels": labels, "truncate": args.truncate}
    return run_rows(ROWS, runtime, shell, expr, value, args, options, chunk_rows=chunk_rows,
                    progress_min_rows=progress_min_rows)[0]
