"""Anomaly detection as task calls: fit, score, list and delete detectors through `runtime.run`.

The local runtime answers these calls in this process (`answer_without_model`: the detectors of its
anomaly folder, tasks/anomaly.py); a server's client sends them (`route`, `to_wire`, `from_wire`:
`POST v1/anomaly/fit|score`, `GET v1/anomaly/models`, `DELETE v1/anomaly/models/NAME`). The runtime
methods `rt.anomaly_fit(...)` etc. are the functions below whose names the registry lists.
"""

from __future__ import annotations

from urllib.parse import quote

import numpy as np

from ..errors import ModelNotFound
from ..settings import Setting, cache_folder
from . import TaskCall
from .anomaly_result import AnomalyDetector, AnomalyScores
from .anomaly_store import check_name

#: its settings, collected through the registry: `RuntimeConfig(anomaly_folder=...)`, `config.anomaly_folder`
SETTINGS = (
    Setting("anomaly_folder", "path", cache_folder("anomaly"),
            "Where fitted anomaly detectors are kept: one folder for the kernels and the server alike.",
            env="UNIVERSAL_KERNEL_ANOMALY_FOLDER"),
)

#: the wire paths, relative to `{base_url}universal/`
PATHS = {"fit": "v1/anomaly/fit", "score": "v1/anomaly/score", "models": "v1/anomaly/models"}


def _call(op: str, **inputs) -> TaskCall:
    return TaskCall("anomaly", None, {"op": op, **inputs})


# The runtime methods ------------------------------------------------------------------------------
def anomaly_fit(runtime, name: str, data, *, backend: str = "isolation_forest", contamination: float = 0.1,
                model: str | None = None, schema: dict[str, str] | None = None) -> AnomalyDetector:
    """Fit a detector on `data` (numeric rows, a DataFrame, or texts over the embedding model `model`) and
    keep it under `name`; `schema` gives each column's encoding (numeric, onehot, ordinal)."""
    return runtime.run(_call("fit", name=name, data=data, backend=backend, contamination=contamination,
                             embedding_model=model, schema=schema))


def anomaly_score(runtime, name: str, data, *, threshold: float | None = None) -> AnomalyScores:
    """Scores in 0..1 (higher = more anomalous) of `data` under the detector kept as `name`; rows at or
    above `threshold` (default: the detector's own) are anomalies."""
    return runtime.run(_call("score", name=name, data=data, threshold=threshold))


def anomaly_models(runtime) -> list[AnomalyDetector]:
    """Every detector kept."""
    return runtime.run(_call("models"))


def anomaly_delete(runtime, name: str) -> bool:
    """Delete the detector kept as `name`; False when there was none."""
    check_name(name)  # refused here, in every runtime, before a path is built from it
    try:
        return runtime.run(_call("delete", name=name))
    except ModelNotFound:  # a server's 404
        return False


# In this process ----------------------------------------------------------------------------------
def answer_without_model(runtime, call: TaskCall):
    """The answer of an anomaly call in this process: detectors are fitted and scored here (scikit-learn),
    texts embedded through `runtime.embed`."""
    from . import anomaly as engine

    inputs = call.inputs
    op = inputs["op"]
    if op == "fit":
        return engine.fit(runtime, inputs["name"], inputs["data"], backend=inputs["backend"],
                          contamination=inputs["contamination"], model=inputs["embedding_model"],
                          schema=inputs["schema"])
    if op == "score":
        return engine.score(runtime, inputs["name"], inputs["data"], threshold=inputs["threshold"])
    if op == "models":
        return engine.models(runtime)
    return engine.delete(runtime, inputs["name"])


# The wire (the HTTP client runtime) ----------------------------------------------------------------
def route(call: TaskCall) -> tuple[str, str]:
    """The HTTP method and path of a call (a body is sent with POST only)."""
    op = call.inputs["op"]
    if op == "models":
        return "GET", PATHS["models"]
    if op == "delete":
        return "DELETE", f"{PATHS['models']}/{quote(call.inputs['name'], safe='')}"
    return "POST", PATHS[op]


def to_wire(call: TaskCall) -> dict:
    from .anomaly_wire import AnomalyFitRequest, AnomalyScoreRequest, data_to_wire

    inputs = call.inputs
    if inputs["op"] == "fit":
        return AnomalyFitRequest.build(model=inputs["name"], data=data_to_wire(inputs["data"]),
                                       backend=inputs["backend"], contamination=inputs["contamination"],
                                       embedding_model=inputs["embedding_model"], schema=inputs["schema"]).body()
    if inputs["op"] == "score":
        return AnomalyScoreRequest.build(model=inputs["name"], data=data_to_wire(inputs["data"]),
                                         threshold=inputs["threshold"]).body()
    return {}


def from_wire(payload: dict, call: TaskCall, stats):
    from .anomaly_wire import (
        AnomalyDeleted, AnomalyDetectorBody, AnomalyModelsResponse, AnomalyScoreResponse, detector_from_wire,
    )
    from .wire_base import read_response

    op = call.inputs["op"]
    if op == "fit":
        return detector_from_wire(read_response(AnomalyDetectorBody, payload, call.task))
    if op == "models":
        return [detector_from_wire(entry) for entry in read_response(AnomalyModelsResponse, payload, call.task).data]
    if op == "delete":
        return read_response(AnomalyDeleted, payload, call.task).deleted
    response = read_response(AnomalyScoreResponse, payload, call.task)
    rows = sorted(response.data, key=lambda row: row.index)
    return AnomalyScores(name=response.model, scores=np.array([row.score for row in rows], dtype=np.float64),
                         is_anomaly=np.array([row.is_anomaly for row in rows], dtype=bool),
                         threshold=response.threshold,
                         raw_scores=np.array([row.raw_score for row in rows], dtype=np.float64))
