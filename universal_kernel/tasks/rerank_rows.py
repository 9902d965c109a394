"""`%rerank` over rows: each document's score for one query, for the row executor (universal_kernel/row_executor.py).

A document's score depends on the query and that document only, so chunks merge exactly; the table is
`index, document, score` sorted best first (ties keep the input's order), missing or empty documents left
out. Ranking needs every row at once, so it runs in the kernel (or on the server), not per Dask partition.
"""

from __future__ import annotations

from ..row_executor import Chunk, Rows, RowTask

COLUMNS = ["index", "document", "score"]


def scores_chunk(runtime, documents: list[str], query: str, model: str | None = None, truncate: bool = False,
                 top: int | None = None) -> Chunk:
    """Each document's score (`top` applies to the whole table, not to a chunk)."""
    result = runtime.rerank(query, documents, model, None, truncate=truncate)
    scores: list = [None] * len(documents)
    for hit in result.hits:
        scores[hit.index] = hit.score
    return Chunk(scores, result.model)


def ranking(rows: Rows):
    import pandas as pd

    ranked = sorted(((position, score) for position, score in enumerate(rows.outputs) if score is not None),
                    key=lambda entry: (-entry[1], entry[0]))  # ties keep the input's order
    top = rows.options.get("top")
    if top is not None:
        ranked = ranked[:top]
    labels = list(rows.index)
    return pd.DataFrame.from_records([(labels[position], rows.items[position], score)
                                      for position, score in ranked], columns=COLUMNS).astype({"score": "float64"})


ROWS = RowTask("%rerank", task="rerank", run=scores_chunk, table=ranking, dedupe=False, aligned=False,
               missing="they are not ranked")
