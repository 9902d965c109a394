"""Anomaly detection: detectors fitted on numeric rows (or texts, over their embeddings), kept by name.

Backends (`anomaly_detectors.py`) are scikit-learn's `IsolationForest` (default), `LocalOutlierFactor`
and `OneClassSVM`, and pyod's ECOD, COPOD and HBOS, each the last step of a `Pipeline` whose first step
standardises numeric columns. Scores are in 0..1, higher = more anomalous: the detector's raw
outlyingness (`raw_scores`, the library's own score) mapped through the empirical CDF of the training
rows' own outlyingness. The threshold flags at most
ceil(contamination * n) of the training rows: about `contamination` of them, fewer where repeated rows
tie at the boundary (a tie block is never split, and never flagged whole past that share). A scoring
call may give its own threshold (in 0..1) instead.

`data` is a numpy array, a DataFrame of numeric columns (their names are kept and checked when
scoring), a list of rows ([x, ..] or {column: x}, the wire's shapes), or texts (a list or Series of
str). The module functions are the local runtime's answers to anomaly calls (anomaly_calls.py: the
calls, the runtime methods `rt.anomaly_fit(...)` etc., and the wire); persistence is `anomaly_store.py`.
scikit-learn is imported only when a detector is fitted or loaded.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InvalidRequest
from . import anomaly_columns as table
from . import anomaly_detectors as detectors
from .anomaly_result import AnomalyDetector, AnomalyScores
from .anomaly_store import DetectorStore, check_name

BACKENDS = detectors.BACKENDS
LOF_NEIGHBORS = detectors.LOF_NEIGHBORS
EMBED_CHUNK = 256  # texts per embedding call: bounded requests, the same vectors




@dataclass
class _Rows:
    """`data` read: a float matrix with its column names, or texts."""

    matrix: np.ndarray | None = None
    columns: list[str] | None = None
    texts: list[str] | None = None


# Reading data --------------------------------------------------------------------------------------
def _is_text(value) -> bool:
    return isinstance(value, str)


def read_data(data, param: str = "data") -> _Rows:
    """The rows of `data`, checked: InvalidRequest naming `param` for anything that is not numeric rows or texts."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        numeric = [c for c in data.columns if pd.api.types.is_numeric_dtype(data[c])]
        other = [str(c) for c in data.columns if c not in numeric]
        if other:
            raise InvalidRequest(f"{param} has non-numeric columns {', '.join(other)}: select numeric ones "
                                 f"(df.select_dtypes('number')), or pass one text column for text mode", param=param)
        return _finite(_Rows(data.to_numpy(dtype=np.float64), [str(c) for c in data.columns]), param)
    if pd is not None and isinstance(data, (pd.Series, pd.Index)):
        if pd.api.types.is_numeric_dtype(data.dtype):
            name = getattr(data, "name", None)
            return _finite(_Rows(data.to_numpy(dtype=np.float64).reshape(-1, 1),
                                 [str(name)] if name is not None else None), param)
        data = data.tolist()
    if isinstance(data, np.ndarray):
        if data.dtype.kind in "USO" and data.ndim == 1:
            data = data.tolist()
        elif data.dtype.kind in "biuf" and data.ndim in (1, 2):
            matrix = data.astype(np.float64)
            return _finite(_Rows(matrix.reshape(-1, 1) if matrix.ndim == 1 else matrix), param)
        else:
            raise InvalidRequest(f"{param} must be a 1-D or 2-D numeric array (or texts), not {data.ndim}-D "
                                 f"{data.dtype}", param=param)
    if isinstance(data, tuple):
        data = list(data)
    if not isinstance(data, list) or not data:
        raise InvalidRequest(f"{param} must be a non-empty list of rows, a numpy array, a DataFrame or texts",
                             param=param)
    if all(_is_text(item) for item in data):
        return _Rows(texts=data)
    if any(_is_text(item) for item in data):
        raise InvalidRequest(f"{param} mixes texts and other values: give texts only (text mode) or numeric rows",
                             param=param)
    if all(isinstance(row, dict) for row in data):
        return _finite(_dict_rows(data, param), param)
    return _finite(_list_rows(data, param), param)


def _number(value, where: str, param: str) -> float:
    if value is None:
        return float("nan")  # counted with the NaNs below
    if isinstance(value, numbers.Real):
        return float(value)
    raise InvalidRequest(f"{param}{where} is a {type(value).__name__}, not a number (texts need text mode: "
                         f"a list of strings only)", param=param)


def _list_rows(rows: list, param: str) -> _Rows:
    width = None
    matrix = []
    for i, row in enumerate(rows):
        row = [row] if isinstance(row, numbers.Real) or row is None else row
        if not isinstance(row, (list, tuple)):
            raise InvalidRequest(f"{param}[{i}] is a {type(row).__name__}; rows are lists of numbers", param=param)
        if width is None:
            width = len(row)
        if len(row) != width or not width:
            raise InvalidRequest(f"{param}[{i}] has {len(row)} values; every row needs the same number (first row: "
                                 f"{width})", param=param)
        matrix.append([_number(v, f"[{i}][{j}]", param) for j, v in enumerate(row)])
    return _Rows(np.asarray(matrix, dtype=np.float64))


def _dict_rows(rows: list[dict], param: str) -> _Rows:
    columns = [str(c) for c in rows[0]]
    matrix = []
    for i, row in enumerate(rows):
        if [str(c) for c in row] != columns:
            raise InvalidRequest(f"{param}[{i}] has columns {list(row)}; every row needs {columns}", param=param)
        matrix.append([_number(v, f"[{i}].{c}", param) for c, v in row.items()])
    if not columns:
        raise InvalidRequest(f"{param} rows have no columns", param=param)
    return _Rows(np.asarray(matrix, dtype=np.float64), columns)


def _finite(rows: _Rows, param: str) -> _Rows:
    if 0 in rows.matrix.shape:
        raise InvalidRequest(f"{param} has {rows.matrix.shape[0]} rows of {rows.matrix.shape[1]} columns: "
                             f"nothing to fit or score", param=param)
    bad = ~np.isfinite(rows.matrix)
    if bad.any():
        where = np.flatnonzero(bad.any(axis=0))
        names = [rows.columns[j] if rows.columns else f"column {j}" for j in where]
        raise InvalidRequest(f"{param} has {int(bad.sum())} missing (NaN/None) or infinite values in "
                             f"{', '.join(map(str, names))}: drop or fill those rows first", param=param)
    return rows


def _vectors(runtime, texts: list[str], model: str) -> np.ndarray:
    parts = [runtime.embed(texts[i:i + EMBED_CHUNK], model).vectors for i in range(0, len(texts), EMBED_CHUNK)]
    return np.concatenate(parts).astype(np.float64)


# Fitting --------------------------------------------------------------------------------------------
def _check_options(backend: str, contamination) -> float:
    if backend not in BACKENDS:
        raise InvalidRequest(f"unknown anomaly backend {backend!r}; one of {', '.join(BACKENDS)}", param="backend")
    if isinstance(contamination, bool) or not isinstance(contamination, numbers.Real) \
            or not 0 < contamination <= 0.5:
        raise InvalidRequest(f"contamination must be in (0, 0.5], the share of rows expected to be anomalies; "
                             f"got {contamination!r}", param="contamination")
    return float(contamination)


def _pipeline(backend: str, texts: bool, contamination: float):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    # embeddings are unit vectors already compared by angle; standardising would weigh noise dimensions
    # as much as the meaningful ones. Numeric columns come in any units, so they are standardised.
    scale = "passthrough" if texts else StandardScaler()
    return Pipeline([("scale", scale), ("detect", detectors.detector(backend, contamination))])


def _outlyingness(pipeline, matrix: np.ndarray) -> np.ndarray:
    return detectors.outlyingness(pipeline, matrix)


class _Calibration:
    """A monotone map of raw outlyingness to 0..1: the training rows' empirical CDF, interpolated, with
    exponential tails beyond the training range so rows past anything seen keep their order. Rows that
    tie (repeated rows) share one level, their block's middle rank: interpolation over repeated x
    values would give each an arbitrary end of its block."""

    def __init__(self, training: np.ndarray):
        ordered = np.sort(training)
        n = len(ordered)
        self.sorted, first, counts = np.unique(ordered, return_index=True, return_counts=True)
        self.levels = (first + (counts + 1) / 2) / (n + 1)
        spread = np.subtract(*np.percentile(ordered, [75, 25]))
        self.scale = float(spread) if spread > 0 else float(np.std(ordered)) or 1.0

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        low, high = self.sorted[0], self.sorted[-1]
        scores = np.interp(raw, self.sorted, self.levels)
        below, above = raw < low, raw > high
        scores[below] = self.levels[0] * np.exp((raw[below] - low) / self.scale)
        scores[above] = 1 - (1 - self.levels[-1]) * np.exp(-(raw[above] - high) / self.scale)
        return np.clip(scores, 0.0, 1.0)


def _threshold(scores: np.ndarray, contamination: float) -> float:
    """The score from which rows are anomalies: at most ceil(contamination * n) training rows reach it.

    Repeated rows share a score, so a block of ties that straddles the (1 - contamination) quantile is
    either flagged whole or not at all: it stays normal (a quantile would flag all of it, half of the
    data when the rows are two repeated texts). The threshold lies halfway between the lowest flagged
    score and the highest normal one, so a row scored again (another process, another BLAS) keeps its
    side; when even the top block is too large, nothing of the training data is flagged."""
    allowed = math.ceil(contamination * len(scores) - 1e-9)
    values, counts = np.unique(scores, return_counts=True)  # ascending
    at_least = np.cumsum(counts[::-1])[::-1]  # rows scoring >= each value
    flagged = np.flatnonzero(at_least <= allowed)
    if not flagged.size:
        return float((values[-1] + 1.0) / 2)
    lowest = flagged[0]
    if lowest == 0:
        return float(values[0])
    return float((values[lowest - 1] + values[lowest]) / 2)


def fit(runtime, name: str, data, *, backend: str = "isolation_forest", contamination: float = 0.1,
        model: str | None = None, schema: dict | None = None) -> AnomalyDetector:
    """Fit a detector on `data` and keep it under `name` in `runtime.config.anomaly_folder`. Categorical
    columns (a `schema`, or a DataFrame's non-numeric dtypes) are encoded first (`anomaly_columns.py`)."""
    check_name(name)
    contamination = _check_options(backend, contamination)
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest("schema must be an object {column: numeric | onehot | ordinal}", param="schema")
    if table.is_table(data, schema):
        return _fit_table(runtime, name, data, schema, backend, contamination)
    rows = read_data(data)
    n_rows = len(rows.texts) if rows.texts is not None else len(rows.matrix)
    _check_rows(backend, n_rows)
    text_model = None
    if rows.texts is not None:
        text_model = model or runtime.default_embedding_model
        matrix = _vectors(runtime, rows.texts, text_model)
    else:
        matrix = rows.matrix

    pipeline = _pipeline(backend, texts=text_model is not None, contamination=contamination).fit(matrix)
    return _keep(runtime, pipeline, matrix, AnomalyDetector(
        name=name, backend=backend, n_samples=n_rows, n_features=int(matrix.shape[1]), threshold=0.0,
        contamination=contamination, columns=rows.columns, text_model=text_model, created_at=time.time()))


def _check_rows(backend: str, n_rows: int) -> None:
    needed = detectors.min_rows(backend)
    if n_rows < needed:
        extra = f" (n_neighbors={LOF_NEIGHBORS}, plus one)" if backend == "local_outlier_factor" else ""
        raise InvalidRequest(f"{backend} needs at least {needed} rows{extra}; data has {n_rows}", param="data")


def _fit_table(runtime, name: str, data, schema, backend: str, contamination: float) -> AnomalyDetector:
    from sklearn.pipeline import Pipeline

    frame, kinds = table.read_table(data, schema)
    _check_rows(backend, len(frame))
    pipeline = Pipeline([("encode", table.encoder(kinds)), ("detect", detectors.detector(backend, contamination))])
    pipeline.fit(frame)
    return _keep(runtime, pipeline, frame, AnomalyDetector(
        name=name, backend=backend, n_samples=len(frame), n_features=len(kinds), threshold=0.0,
        contamination=contamination, columns=list(kinds), schema=kinds, created_at=time.time()))


def _keep(runtime, pipeline, matrix, detector: AnomalyDetector) -> AnomalyDetector:
    """Calibrate the fitted pipeline on its training rows, set the threshold, and save it under its name."""
    training = detectors.training_outlyingness(pipeline, matrix)
    calibration = _Calibration(training)
    detector.threshold = _threshold(calibration(training), detector.contamination)
    signature = DetectorStore(runtime.config.anomaly_folder).save(
        detector.name, {"pipeline": pipeline, "calibration": calibration, "detector": asdict(detector)},
        asdict(detector))
    _fitted_here[(str(runtime.config.anomaly_folder), detector.name)] = (signature, _fingerprint(matrix), training)
    return detector


#: (folder, name) -> (signature, fingerprint of the training matrix, the training rows' raw scores) of the
#: last fit in this process. Scoring the very rows just fitted (`%anomaly df`: fit, then score) takes
#: them from here instead of a second pass over the forest, while the file is still the one fitted.
_fitted_here: dict[tuple[str, str], tuple[str, str, np.ndarray]] = {}


def _fingerprint(matrix) -> str:
    import hashlib

    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(matrix, pd.DataFrame):  # a table: its rows' hashes, in order
        matrix = pd.util.hash_pandas_object(matrix, index=False).to_numpy()
    data = np.ascontiguousarray(matrix)
    return f"{data.shape}{data.dtype}" + hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


# Scoring -------------------------------------------------------------------------------------------
def _aligned(rows: _Rows, detector: AnomalyDetector) -> np.ndarray:
    """The rows as the detector was fitted on them: the same columns, in the same order."""
    if rows.texts is not None:
        raise InvalidRequest(f"detector {detector.name!r} was fitted on numeric columns; data has texts",
                             param="data")
    matrix = rows.matrix
    if detector.columns is not None and rows.columns is not None:
        if set(rows.columns) != set(detector.columns) or len(rows.columns) != len(detector.columns):
            missing = [c for c in detector.columns if c not in rows.columns]
            extra = [c for c in rows.columns if c not in detector.columns]
            raise InvalidRequest(f"data's columns do not match detector {detector.name!r}: it was fitted on "
                                 f"{detector.columns}; missing {missing}, unexpected {extra}", param="data")
        matrix = matrix[:, [rows.columns.index(c) for c in detector.columns]]
    if matrix.shape[1] != detector.n_features:
        raise InvalidRequest(f"data has {matrix.shape[1]} columns; detector {detector.name!r} was fitted on "
                             f"{detector.n_features}", param="data")
    return matrix


def check_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise InvalidRequest(f"threshold must be a number in 0..1 (scores are in 0..1, higher = more anomalous); "
                             f"got {threshold!r}", param="threshold")
    return float(threshold)


def score(runtime, name: str, data, *, threshold: float | None = None) -> AnomalyScores:
    """Scores in 0..1 (higher = more anomalous) of `data` under the detector kept as `name`; rows at or
    above `threshold` (default: the detector's own) are anomalies."""
    threshold = check_threshold(threshold)
    store = DetectorStore(runtime.config.anomaly_folder)
    fitted = store.load(name)
    here = _fitted_here.get((str(runtime.config.anomaly_folder), name))
    known = None
    if here is not None and here[0] == store.signature(name):
        known = here[1:]  # the rows it was fitted on have known scores
    return score_fitted(runtime, fitted, data, known=known, threshold=threshold)


def load_fitted(runtime, name: str) -> dict:
    """The detector kept as `name` (its signature checked), to be shipped where the data is (Dask workers)."""
    return DetectorStore(runtime.config.anomaly_folder).load(name)


def score_fitted(runtime, fitted: dict, data, *, known: tuple[str, np.ndarray] | None = None,
                 threshold: float | None = None) -> AnomalyScores:
    """Scores of `data` under a loaded detector; text rows are embedded with `runtime`."""
    detector = AnomalyDetector(**fitted["detector"])
    if detector.schema is not None:
        matrix = table.read_for(data, detector.schema, detector.name)
    else:
        matrix = _rows_for(runtime, detector, data)
    if known is not None and known[0] == _fingerprint(matrix):
        raw = known[1].copy()
    else:
        raw = _outlyingness(fitted["pipeline"], matrix)
    scores = fitted["calibration"](raw)
    threshold = detector.threshold if threshold is None else threshold
    return AnomalyScores(name=detector.name, scores=scores, is_anomaly=scores >= threshold, threshold=threshold,
                         raw_scores=raw)


def _rows_for(runtime, detector: AnomalyDetector, data) -> np.ndarray:
    rows = read_data(data)
    if detector.text_model is not None:
        if rows.texts is None:
            raise InvalidRequest(f"detector {detector.name!r} was fitted on texts (over {detector.text_model}); "
                                 f"data has numeric rows", param="data")
        return _vectors(runtime, rows.texts, detector.text_model)
    return _aligned(rows, detector)


def models(runtime) -> list[AnomalyDetector]:
    return [AnomalyDetector(**description)
            for description in DetectorStore(runtime.config.anomaly_folder).describe_all().values()]


def delete(runtime, name: str) -> bool:
    _fitted_here.pop((str(runtime.config.anomaly_folder), name), None)
    return DetectorStore(runtime.config.anomaly_folder).delete(name)
