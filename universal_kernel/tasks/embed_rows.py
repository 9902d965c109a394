"""`%embed` over rows: its row function and its results, for the row executor (universal_kernel/row_executor.py).

In the kernel the result is a float32 matrix, one row per input (NaN rows for missing values); on Dask,
where a partition is a pandas object, a Series of float32 vectors on the input's index. Empty strings are
texts like any other (they have a vector).
"""

from __future__ import annotations

import numpy as np

from ..row_executor import Chunk, Rows, RowTask


def embed_chunk(runtime, texts: list[str], model: str | None = None, normalize: bool = True, **options) -> Chunk:
    result = runtime.embed(texts, model, normalize=normalize, **options)
    return Chunk(list(result.vectors), result.model, {"computed": result.stats.rows_computed,
                                                      "cached": result.stats.rows_cached,
                                                      "prompt_tokens": result.prompt_tokens})


def _dimension(rows: Rows) -> int:
    """Width of the model's vectors, for an input with no text at all (all missing, or empty)."""
    for vector in rows.outputs:
        if vector is not None:
            return vector.shape[0]
    return int(rows.runtime.embed(["dimension"], rows.options.get("model")).vectors.shape[1])


def _vectors(rows: Rows) -> list[np.ndarray]:
    if all(vector is not None for vector in rows.outputs):
        return rows.outputs
    missing = np.full(_dimension(rows), np.nan, dtype=np.float32)
    return [missing if vector is None else vector for vector in rows.outputs]


def vector_series(rows: Rows):
    import pandas as pd

    return pd.Series(_vectors(rows), index=rows.index, name=rows.name, dtype=object)


def vector_meta(rows: Rows):
    import pandas as pd

    return pd.Series([], dtype=object, name=rows.name)


def vector_matrix(rows: Rows) -> np.ndarray:
    vectors = _vectors(rows)
    if not vectors:
        return np.full((0, _dimension(rows)), np.nan, dtype=np.float32)
    return np.stack(vectors).astype(np.float32, copy=False)


def summary(report, runtime) -> str:
    where = runtime.where if runtime.where != "local" else (
        f"{report.counts.get('computed', 0)} computed, {report.counts.get('cached', 0)} from cache")
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    return (f"{report.model or 'default model'} \u00b7 {plural(report.rows, 'row')} \u00b7 "
            f"{plural(report.distinct, 'distinct text')} ({where}) \u00b7 {report.seconds:.2f} s")


ROWS = RowTask("%embed", task="embed", run=embed_chunk, table=vector_series, meta=vector_meta,
               local_result=vector_matrix, summary=summary, blank_is_missing=False,
               missing="their rows are NaN", missing_means="missing (None/NaN)")
