"""`%classify` over rows: its row function and its table, for the row executor (universal_kernel/row_executor.py).

The table is `label, score` on the input's index; a missing or empty row gets NaN in both.
"""

from __future__ import annotations

from ..row_executor import Chunk, Rows, RowTask


def classify_chunk(runtime, texts: list[str], model: str | None = None, labels: list[str] | None = None,
                   truncate: bool = False) -> Chunk:
    result = runtime.classify(texts, model, labels, truncate=truncate)
    return Chunk(result.rows, result.model)


def label_table(rows: Rows):
    import pandas as pd

    nan = float("nan")
    table = pd.DataFrame({"label": pd.Series([nan if r is None else r.label for r in rows.outputs], dtype=object),
                          "score": pd.Series([nan if r is None else r.score for r in rows.outputs], dtype="float64")})
    table.index = rows.index
    return table


ROWS = RowTask("%classify", task="classify", run=classify_chunk, table=label_table,
               missing="their label and score are NaN")
