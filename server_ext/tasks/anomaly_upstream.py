"""Anomaly detection in the compatibility door's shape: upstream's routes (`/v1/anomaly/fit`,
`/v1/anomaly/score`; api_types/anomaly.py and the dicts routers/anomaly/router.py returns) on this
runtime's detectors.

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

import time
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field

from universal_kernel.errors import InvalidRequest
from universal_kernel.tasks.anomaly_columns import KINDS

from ..errors import Failure, failure
from ..serving import Serving
from ..upstream.base import unsupported, upstream_post_handler
from ..upstream.wire import UpstreamRequest
from . import off_loop


Normalization = Literal["standardization", "zscore", "raw"]


class AnomalyFitRequest(UpstreamRequest):
    model: str = "default"
    backend: str = "isolation_forest"
    data: Optional[Union[list[list[float]], list[dict[str, Any]]]] = None
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")
    contamination: float = Field(default=0.1, gt=0, le=0.5)
    epochs: int = 100  # autoencoder only: no autoencoder here, so never used
    batch_size: int = 32
    normalization: Normalization = "standardization"
    overwrite: bool = True
    training_file: Optional[str] = None
    polars_config: Optional[dict[str, Any]] = None


class AnomalyFitResponse(BaseModel):
    object: Literal["fit_result"] = "fit_result"
    model: str
    backend: str
    samples_fitted: int
    training_time_ms: float
    model_params: dict[str, Any]
    encoder: Optional[dict[str, Any]] = None
    status: Literal["fitted"] = "fitted"


class AnomalyScoreRequest(UpstreamRequest):
    model: str = "default"
    backend: str = "isolation_forest"
    data: Union[list[list[float]], list[dict[str, Any]]]
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")
    threshold: Optional[float] = None
    normalization: Normalization = "standardization"
    explain: bool = False
    feature_names: Optional[list[str]] = None


class AnomalyScoreResult(BaseModel):
    index: int
    score: float
    is_anomaly: bool
    raw_score: float


class AnomalySummary(BaseModel):
    total_points: int
    anomaly_count: int
    anomaly_rate: float
    threshold: float


class AnomalyScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[AnomalyScoreResult]
    total_count: int
    model: str
    backend: str
    summary: AnomalySummary


def _common_refusal(req) -> Failure | None:
    if req.normalization != "standardization":
        return unsupported("normalization", f"normalization {req.normalization!r} is not offered here: scores are "
                                            f"0..1 (higher = more anomalous, \"standardization\"), and every row "
                                            f"carries the detector's raw_score")
    other = {column: kind for column, kind in (req.schema_ or {}).items() if kind not in KINDS}
    if other:
        return unsupported("schema", f"the encodings offered here are numeric, onehot and label (ordinal); "
                                     f"not {other}")
    return None


async def fit(serving: Serving, req: AnomalyFitRequest):
    refused = _common_refusal(req)
    if req.training_file is not None:
        refused = unsupported("training_file", "training_file is not supported here (no upload route): send the "
                                               "rows in data")
    elif req.polars_config and req.polars_config.get("enabled"):
        refused = unsupported("polars_config", "Polars feature engineering is not offered here: compute rolling "
                                               "features in the notebook and send them as columns")
    elif not req.overwrite:
        refused = unsupported("overwrite", "a name holds one detector here (no versions): fit under a new name")
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

    found = await off_loop(work)
    if isinstance(found, Failure):
        return found
    detector, elapsed_ms = found
    params = {"contamination": detector.contamination, "threshold": detector.threshold,
              "n_features": detector.n_features, "columns": detector.columns, "normalization": "standardization"}
    encoder = None if detector.schema is None else {"schema": detector.schema, "features": detector.columns}
    return AnomalyFitResponse(model=detector.name, backend=detector.backend, samples_fitted=detector.n_samples,
                              training_time_ms=elapsed_ms, model_params=params, encoder=encoder)


async def score(serving: Serving, req: AnomalyScoreRequest):
    refused = _common_refusal(req)
    if req.explain:
        refused = unsupported("explain", "explanations are not offered here yet: send explain: false")
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

    found = await off_loop(work)
    if isinstance(found, Failure):
        return found
    data = [AnomalyScoreResult(index=i, score=float(s), is_anomaly=bool(flag), raw_score=float(raw))
            for i, (s, flag, raw) in enumerate(zip(found.scores, found.is_anomaly, found.raw_scores))]
    count = sum(row.is_anomaly for row in data)
    summary = AnomalySummary(total_points=len(data), anomaly_count=count, anomaly_rate=count / max(len(data), 1),
                             threshold=found.threshold)
    return AnomalyScoreResponse(data=data, total_count=len(data), model=found.name, backend=req.backend,
                                summary=summary)


AnomalyFitDoor = upstream_post_handler(AnomalyFitRequest, fit)
AnomalyScoreDoor = upstream_post_handler(AnomalyScoreRequest, score)


def door_routes() -> list[tuple[str, type]]:
    """Relative to the door's root (`universal/runtime/`)."""
    return [(r"v1/anomaly/fit/?", AnomalyFitDoor), (r"v1/anomaly/score/?", AnomalyScoreDoor)]
