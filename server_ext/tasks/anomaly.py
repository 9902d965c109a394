"""Anomaly detection over HTTP (`universal/v1/anomaly/...`), detectors kept in the runtime's anomaly folder
(the one the kernels use: a detector fitted in one is scored by the other).

- `POST anomaly/fit` `{model: NAME, data: [[x..]] or [{col: x}] or [str], backend?, contamination?: 0.1,
  embedding_model?}` -> `{model, n_samples, n_features, threshold, backend, contamination, columns,
  embedding_model, created_at}`
- `POST anomaly/score` `{model, data, threshold?}` -> `{model, threshold, data: [{index, score, is_anomaly, raw_score}],
  summary: {total_points, anomaly_count, anomaly_rate, threshold}}` (`raw_score`: the detector library's own)
- `GET anomaly/models` -> `{object: "list", data: [detector]}`; `DELETE anomaly/models/NAME` -> `{model, deleted}`
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Literal, Optional

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel, ConfigDict, Field
from tornado import web

from universal_kernel.errors import ModelNotFound
from universal_kernel.tasks import anomaly as anomaly_task

from .. import protocol as p
from ..errors import Failure, failure_from
from ..handlers import BaseHandler
from ..serving import Serving
from . import post_handler


class AnomalyFitRequest(p._Request):
    model: str  # the detector's name
    data: list[Any]  # checked by the runtime, which names what is wrong (param "data")
    backend: str = "isolation_forest"
    contamination: float = 0.1
    embedding_model: Optional[str] = None  # texts: their vectors' model (default: the server's)
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")  # column -> numeric|onehot|ordinal


class AnomalyScoreRequest(p._Request):
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

    model_config = ConfigDict(serialize_by_alias=True)


class AnomalyModelsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[AnomalyDetectorBody]


async def _off_loop(work: Callable[[], Any]) -> Any:
    """scikit-learn's work and the detector files, run off the event loop; typed errors become failures."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, work)
    except Exception as exc:  # noqa: BLE001 - failures are values here, as in serving.py
        return failure_from(exc)


async def fit(serving: Serving, req: AnomalyFitRequest) -> AnomalyDetectorBody | Failure:
    found = await _off_loop(lambda: serving.runtime.anomaly_fit(
        req.model, req.data, backend=req.backend, contamination=req.contamination, model=req.embedding_model,
        schema=req.schema_))
    return found if isinstance(found, Failure) else AnomalyDetectorBody(**anomaly_task.detector_to_wire(found))


async def score(serving: Serving, req: AnomalyScoreRequest) -> AnomalyScoreResponse | Failure:
    found = await _off_loop(lambda: serving.runtime.anomaly_score(req.model, req.data, threshold=req.threshold))
    if isinstance(found, Failure):
        return found
    rows = [AnomalyRow(index=i, score=float(s), is_anomaly=bool(flag), raw_score=float(raw))
            for i, (s, flag, raw) in enumerate(zip(found.scores, found.is_anomaly, found.raw_scores))]
    return AnomalyScoreResponse(model=found.name, threshold=found.threshold, data=rows,
                                summary=AnomalySummary.of(found.is_anomaly, found.threshold))


async def models(serving: Serving) -> AnomalyModelsResponse | Failure:
    found = await _off_loop(serving.runtime.anomaly_models)
    if isinstance(found, Failure):
        return found
    return AnomalyModelsResponse(data=[AnomalyDetectorBody(**anomaly_task.detector_to_wire(d)) for d in found])


async def delete(serving: Serving, name: str) -> dict | Failure:
    def work():
        if not serving.runtime.anomaly_delete(name):
            raise ModelNotFound(f"no anomaly detector named {name!r}")
        return {"model": name, "deleted": True}

    return await _off_loop(work)


AnomalyFitHandler = post_handler(AnomalyFitRequest, fit)


AnomalyScoreHandler = post_handler(AnomalyScoreRequest, score)


class AnomalyModelsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.send(await models(self.serving))


class AnomalyModelHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def delete(self, name: str):
        self.send(await delete(self.serving, name))


def routes() -> list[tuple[str, type]]:
    paths = anomaly_task.PATHS  # the paths the client runtime uses
    return [(rf"universal/{paths['fit']}/?", AnomalyFitHandler),
            (rf"universal/{paths['score']}/?", AnomalyScoreHandler),
            (rf"universal/{paths['models']}/?", AnomalyModelsHandler),
            (rf"universal/{paths['models']}/([^/]+)/?", AnomalyModelHandler)]
