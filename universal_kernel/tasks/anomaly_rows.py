"""`%anomaly --model NAME` over the rows of a Dask collection: the row function scores them with a fitted
detector shipped with the graph (read once in the kernel, `anomaly.load_fitted`), on each worker's runtime
(which embeds texts for a text detector). For the row executor (universal_kernel/row_executor.py).

The table is `anomaly_score, is_anomaly` on the input's index (NaN and False for a missing text); the
magic gives its scores, and `--column NAME` adds both (NAME, NAME_is_anomaly).
"""

from __future__ import annotations

import numpy as np

from ..row_executor import Chunk, Rows, RowTask


def scores_chunk(runtime, data, fitted: dict) -> Chunk:
    from . import anomaly

    result = anomaly.score_fitted(runtime, fitted, data)
    return Chunk(list(zip(result.scores.tolist(), result.is_anomaly.tolist())))


def score_table(rows: Rows):
    import pandas as pd

    scores = np.full(len(rows.outputs), np.nan)
    flags = np.zeros(len(rows.outputs), dtype=bool)
    for i, output in enumerate(rows.outputs):
        if output is not None:
            scores[i], flags[i] = output
    return pd.DataFrame({"anomaly_score": scores, "is_anomaly": flags}, index=rows.index)


def scores_only(table):
    return table["anomaly_score"]


_COMMON = dict(run=scores_chunk, table=score_table, lazy_result=scores_only, dedupe=False, chunk_rows=None,
               missing="their anomaly score is NaN")
#: texts: embedded on the workers with the detector's embedding model
TEXT_ROWS = RowTask("%anomaly", task="embed", **_COMMON)
#: numbers: a DataFrame's numeric columns, or a numeric Series; every row is data
NUMBER_ROWS = RowTask("%anomaly", task=None, reads="frame", **_COMMON)
