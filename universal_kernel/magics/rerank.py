"""`%rerank QUERY DOCS [--top N] [-m M]`: the documents ranked by relevance to the query, best first.

QUERY is a quoted string or a variable/expression that gives one; DOCS a Series, a list of strings or
one string. The result is a DataFrame `index, document, score`: `index` is the document's label in
the Series (its position in a list). Missing or empty documents are left out.
"""

from __future__ import annotations

import time

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from .common import check_name, user_errors
from .rows import CHUNK_ROWS, chunked, deliver, evaluate, parse, read_texts, require_pandas, summary, warn_missing

COLUMNS = ["index", "document", "score"]

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
    items, index, present = read_texts(evaluate(shell, docs_expr, "%rerank"), "%rerank")

    documents = [items[i] for i in present]
    started = time.perf_counter()
    ranked, model_id = [], args.model  # (position in the input, score, document)
    # each document's score depends on the query and that document only, so chunks merge exactly
    offset = 0
    for part in chunked(documents, chunk_rows, progress_min_rows):
        result = runtime.rerank(query, part, args.model, None, truncate=args.truncate)
        model_id = result.model
        ranked.extend((present[offset + hit.index], hit.score, hit.document) for hit in result.hits)
        offset += len(part)
    elapsed = time.perf_counter() - started
    ranked.sort(key=lambda entry: (-entry[1], entry[0]))  # ties keep the input's order
    if args.top is not None:
        ranked = ranked[:args.top]

    pd = require_pandas()
    row_labels = list(index) if index is not None else list(range(len(items)))
    table = pd.DataFrame.from_records([(row_labels[pos], doc, score) for pos, score, doc in ranked],
                                      columns=COLUMNS).astype({"score": "float64"})

    warn_missing(len(items) - len(present), len(items), "they are not ranked")
    print(summary(model_id, len(items), elapsed, runtime))
    return deliver(shell, table, args.out, False)


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
