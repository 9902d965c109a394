"""Upstream's anomaly routes (`/v1/anomaly/fit`, `/v1/anomaly/score`) on this runtime's detectors.

The mapping: upstream's `model` is the detector's name, `backend` one of this runtime's detectors
(upstream's other PyOD names are a 400 that lists ours), `contamination` as is. Scores are this
runtime's: 0..1, higher = more anomalous, the training rows' empirical CDF (upstream's
"standardization" is a sigmoid of the same orientation and range); `raw_score` is the library's own.
`schema` encodes columns as numeric, onehot or label (ordinal), through scikit-learn's ColumnTransformer.
What has no honest counterpart here is refused with a 400 rather than dropped: `normalization`
other than "standardization", the schema encodings hash, binary and frequency, `explain`,
`training_file`, Polars features, and `overwrite: false` (upstream keeps versions; a name here holds
one detector).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from universal_kernel.errors import InvalidRequest
from universal_kernel.tasks.anomaly_columns import KINDS

from ..errors import Failure, failure, failure_from
from ..serving import Serving
from . import wire as w


def _unsupported(param: str, message: str) -> Failure:
    return failure(400, message, param=param, code="unsupported_parameter")


def _common_refusal(req) -> Failure | None:
    if req.normalization != "standardization":
        return _unsupported("normalization", f"normalization {req.normalization!r} is not offered here: scores are "
                                             f"0..1 (higher = more anomalous, \"standardization\"), and every row "
                                             f"carries the detector's raw_score")
    other = {column: kind for column, kind in (req.schema_ or {}).items() if kind not in KINDS}
    if other:
        return _unsupported("schema", f"the encodings offered here are numeric, onehot and label (ordinal); "
                                      f"not {other}")
    return None


async def _off_loop(work: Callable[[], Any]) -> Any:
    try:
        return await asyncio.get_running_loop().run_in_executor(None, work)
    except Exception as exc:  # noqa: BLE001 - typed runtime errors become their failures
        return failure_from(exc)


async def fit(serving: Serving, req: w.AnomalyFitRequest):
    refused = _common_refusal(req)
    if req.training_file is not None:
        refused = _unsupported("training_file", "training_file is not supported here (no upload route): send the "
                                                "rows in data")
    elif req.polars_config and req.polars_config.get("enabled"):
        refused = _unsupported("polars_config", "Polars feature engineering is not offered here: compute rolling "
                                                "features in the notebook and send them as columns")
    elif not req.overwrite:
        refused = _unsupported("overwrite", "a name holds one detector here (no versions): fit under a new name")
    elif not req.data:
        refused = failure(400, "data must be a non-empty list of rows", param="data", code="invalid_value")
    if refused:
        return refused
    runtime = serving.runtime

    def work():
        started = time.perf_counter()
        detector = runtime.anomaly_fit(req.model, req.data, backend=req.backend, contamination=req.contamination,
                                       schema=req.schema_)
        return detector, (time.perf_counter() - started) * 1000

    found = await _off_loop(work)
    if isinstance(found, Failure):
        return found
    detector, elapsed_ms = found
    params = {"contamination": detector.contamination, "threshold": detector.threshold,
              "n_features": detector.n_features, "columns": detector.columns, "normalization": "standardization"}
    encoder = None if detector.schema is None else {"schema": detector.schema, "features": detector.columns}
    return w.AnomalyFitResponse(model=detector.name, backend=detector.backend, samples_fitted=detector.n_samples,
                                training_time_ms=elapsed_ms, model_params=params, encoder=encoder)


async def score(serving: Serving, req: w.AnomalyScoreRequest):
    refused = _common_refusal(req)
    if req.explain:
        refused = _unsupported("explain", "explanations are not offered here yet: send explain: false")
    if refused:
        return refused
    runtime = serving.runtime

    def work():
        kept = {d.name: d for d in runtime.anomaly_models()}.get(req.model)
        if kept is not None and kept.backend != req.backend:
            # upstream keeps one detector per (model, backend): another backend is another detector
            raise InvalidRequest(f"detector {req.model!r} was fitted with backend {kept.backend!r}, not "
                                 f"{req.backend!r}: send backend: {kept.backend!r}, or fit it with {req.backend!r}",
                                 param="backend")
        given = {column: KINDS[kind] for column, kind in (req.schema_ or {}).items()}
        fitted = (kept.schema if kept is not None else None) or {}
        if kept is not None and given and any(fitted.get(column, "numeric") != kind for column, kind in given.items()):
            # the encoder is the one fitted: a different schema cannot apply to these rows
            raise InvalidRequest(f"detector {req.model!r} was fitted with the schema {fitted or 'all numeric'}; "
                                 f"this request's schema differs", param="schema")
        return runtime.anomaly_score(req.model, req.data, threshold=req.threshold)

    found = await _off_loop(work)
    if isinstance(found, Failure):
        return found
    data = [w.AnomalyScoreResult(index=i, score=float(s), is_anomaly=bool(flag), raw_score=float(raw))
            for i, (s, flag, raw) in enumerate(zip(found.scores, found.is_anomaly, found.raw_scores))]
    count = sum(row.is_anomaly for row in data)
    summary = w.AnomalySummary(total_points=len(data), anomaly_count=count, anomaly_rate=count / max(len(data), 1),
                               threshold=found.threshold)
    return w.AnomalyScoreResponse(data=data, total_count=len(data), model=found.name, backend=req.backend,
                                  summary=summary)
