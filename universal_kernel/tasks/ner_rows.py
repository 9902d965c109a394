"""`%ner` over rows: its row function and its long table, for the row executor (universal_kernel/row_executor.py).

The table has one row per entity, `row, text, label, start, end, score` (`row`: the input's index label);
`--column` stores each row's entities as a list of dicts. Missing or empty rows have no entities.
"""

from __future__ import annotations

from ..row_executor import Chunk, Rows, RowTask

COLUMNS = ["row", "text", "label", "start", "end", "score"]


def entities_chunk(runtime, texts: list[str], model: str | None = None, truncate: bool = False) -> Chunk:
    result = runtime.ner(texts, model, truncate=truncate)
    return Chunk(result.rows, result.model)


def entity_table(rows: Rows):
    import pandas as pd

    records = [(row, e.text, e.label, e.start, e.end, e.score)
               for row, entities in zip(rows.index, rows.outputs) for e in entities or []]
    table = pd.DataFrame.from_records(records, columns=COLUMNS)
    # typed even when empty, so `table.start` is always usable as offsets
    return table.astype({"start": "int64", "end": "int64", "score": "float64"})


def entity_meta(rows: Rows):
    """The empty table Dask announces: `row` has the input index's type."""
    import pandas as pd

    return pd.DataFrame({"row": pd.Series([], dtype=rows.index.dtype), "text": pd.Series([], dtype=object),
                         "label": pd.Series([], dtype=object), "start": pd.Series([], dtype="int64"),
                         "end": pd.Series([], dtype="int64"), "score": pd.Series([], dtype="float64")})[COLUMNS]


def entity_dicts(rows: Rows) -> dict:
    return {"": [[{"text": e.text, "label": e.label, "start": e.start, "end": e.end, "score": e.score}
                  for e in entities or []] for entities in rows.outputs]}


ROWS = RowTask("%ner", task="ner", run=entities_chunk, table=entity_table, meta=entity_meta, columns=entity_dicts,
               aligned=False, missing="they have no entities")
