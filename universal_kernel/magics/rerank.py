"""`%rerank QUERY DOCS [--top N] [-m M]`: the documents ranked by relevance to the query, best first.

QUERY is a quoted string or a variable/expression that gives one; DOCS a Series, a list of strings or
one string. The result is a DataFrame `index, document, score`: `index` is the document's label in
the Series (its position in a list). Missing or empty documents are left out.
"""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..row_executor import CHUNK_ROWS
from ..tasks.rerank_rows import ROWS
from .common import check_name, user_errors
from .rows import evaluate, parse, run_here

_OPTIONS_WITH_VALUE = {"-m", "--model", "--out", "--top"}
_FLAGS = {"--server", "--truncate"}


@magic_arguments("rerank")
@argument("expr", nargs="*", help="QUERY (a quoted string or a variable) then DOCS (a Series or a list)")
@argument("-m", "--model", default=None, help="cross-encoder or embedding model (default: all-minilm-l6-v2)")
@argument("--top", type=int, default=None, metavar="N", help="keep the N best documents")
@argument("--out", default=None, metavar="VAR", help="store the DataFrame in VAR")
@argument("--truncate", action="store_true", help="cut texts longer than the model takes instead of refusing")
@argument("--server", action="store_true", help="run on the Jupyter server's runtime")
def magic(magics, line):
    """Rank documents by relevance to a query: a DataFrame `index, document, score`, best first."""
    expr, args = parse(magic.parser, line, _OPTIONS_WITH_VALUE, _FLAGS, "%rerank")
    return user_errors(run_rerank)(magics.runtime_for(args.server), magics.shell, expr, args,
                                   progress_min_rows=magics.progress_min_rows)


def run_rerank(runtime, shell, expr: str, args, *, chunk_rows: int = CHUNK_ROWS, progress_min_rows: int = 512):
    if args.top is not None and args.top < 1:
        raise UsageError(f"--top needs a whole number of at least 1, not {args.top}")
    check_name("--out", args.out)
    query_expr, docs_expr = split_query(expr)
    if not docs_expr:
        raise UsageError("%rerank needs a query and documents: %rerank \"QUERY\" df.text")
    query = evaluate(shell, query_expr, "%rerank")
    if not isinstance(query, str) or not query.strip():
        raise UsageError(f"%rerank: the query {query_expr} must be a non-empty string, not {query!r}"[:200])
    documents = evaluate(shell, docs_expr, "%rerank")
    options = {"query": query, "model": args.model, "truncate": args.truncate, "top": args.top}
    return run_here(ROWS, runtime, shell, docs_expr, documents, args, options, chunk_rows=chunk_rows,
                    progress_min_rows=progress_min_rows)[0]


def split_query(expr: str) -> tuple[str, str]:
    """(QUERY, DOCS): the first top-level chunk (outside quotes and brackets) is the query."""
    depth, quote, escaped = 0, None, False
    for i, ch in enumerate(expr):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch.isspace() and depth <= 0:
            return expr[:i], expr[i:].strip()
    return expr, ""
