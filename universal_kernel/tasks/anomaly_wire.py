"""Anomaly detection's wire schema (paths relative to `{base_url}universal/`, `PATHS` in tasks/anomaly.py):

- `POST v1/anomaly/fit` `{model: NAME, data: [[x..]] or [{col: x}] or [str], backend?, contamination?: 0.1,
  embedding_model?, schema?}` -> the detector: `{model, n_samples, n_features, threshold, backend,
  contamination, columns, embedding_model, created_at, schema}`
- `POST v1/anomaly/score` `{model, data, threshold?}` -> `{model, threshold, data: [{index, score, is_anomaly,
  raw_score}], summary: {total_points, anomaly_count, anomaly_rate, threshold}}` (`raw_score`: the detector
  library's own)
- `GET v1/anomaly/models` -> `{object: "list", data: [detector]}`; `DELETE v1/anomaly/models/NAME` ->
  `{model, deleted}`
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .anomaly_result import AnomalyDetector
from .wire_base import WireRequest, read_response


class AnomalyFitRequest(WireRequest):
    model: str  # the detector's name
    data: list[Any]  # checked by the runtime, which names what is wrong (param "data")
    backend: str = "isolation_forest"
    contamination: float = 0.1
    embedding_model: Optional[str] = None  # texts: their vectors' model (default: the server's)
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")  # column -> numeric|onehot|ordinal


class AnomalyScoreRequest(WireRequest):
    model: str
    data: list[Any]
    threshold: Optional[float] = None  # in 0..1; None: the detector's own (checked by the runtime)


class AnomalyRow(BaseModel):
    index: int  # the row's position in the request
    score: float  # 0..1, higher = more anomalous
    is_anomaly: bool
    raw_score: float  # the detector library's own score, higher = more anomalous


class AnomalySummary(BaseModel):
    total_points: int
    anomaly_count: int
    anomaly_rate: float
    threshold: float

    @classmethod
    def of(cls, is_anomaly, threshold: float) -> "AnomalySummary":
        count = int(sum(bool(flag) for flag in is_anomaly))
        return cls(total_points=len(is_anomaly), anomaly_count=count, anomaly_rate=count / max(len(is_anomaly), 1),
                   threshold=threshold)


class AnomalyScoreResponse(BaseModel):
    model: str
    threshold: float
    data: list[AnomalyRow]
    summary: AnomalySummary


class AnomalyDetectorBody(BaseModel):
    model: str
    backend: str
    n_samples: int
    n_features: int
    threshold: float
    contamination: float
    columns: Optional[list[str]] = None
    embedding_model: Optional[str] = None
    created_at: float = 0.0
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")  # `schema` is BaseModel's own name

    model_config = ConfigDict(serialize_by_alias=True, populate_by_name=True)


class AnomalyModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[AnomalyDetectorBody]


class AnomalyDeleted(BaseModel):
    model: str
    deleted: bool


# The wire (the client sends, the server answers) ------------------------------------------------------
def data_to_wire(data) -> list:
    """`data` as JSON rows: a DataFrame as [{column: x}] (its names kept), arrays as lists, NaN as null."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        records = data.astype(object).where(data.notna(), None).to_dict(orient="records")
        return [{str(k): v for k, v in row.items()} for row in records]
    if pd is not None and isinstance(data, (pd.Series, pd.Index)):
        data = data.astype(object).where(data.notna(), None).tolist() if isinstance(data, pd.Series) \
            else data.tolist()
    if isinstance(data, np.ndarray):
        data = np.where(np.isnan(data), None, data).tolist() if data.dtype.kind == "f" else data.tolist()
    return [list(row) if isinstance(row, tuple) else row for row in data] if isinstance(data, (list, tuple)) \
        else data


def detector_to_wire(detector: AnomalyDetector):
    """A detector as the server sends it (`AnomalyDetectorBody`): `model` is its name, `embedding_model` the
    texts' model."""

    body = asdict(detector)
    body["model"] = body.pop("name")
    body["embedding_model"] = body.pop("text_model")
    return AnomalyDetectorBody.model_validate(body)


def detector_from_wire(body) -> AnomalyDetector:
    """A detector from the server's body (a dict, or an `AnomalyDetectorBody`); another shape is a
    GenerationFailed naming the field at fault."""

    if not isinstance(body, AnomalyDetectorBody):
        body = read_response(AnomalyDetectorBody, body, "anomaly")
    return AnomalyDetector(name=body.model, backend=body.backend, n_samples=body.n_samples,
                           n_features=body.n_features, threshold=body.threshold, contamination=body.contamination,
                           columns=body.columns, text_model=body.embedding_model, created_at=body.created_at or 0.0,
                           schema=body.schema_)
