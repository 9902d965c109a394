"""Anomaly detection over HTTP (`universal/v1/anomaly/...`), detectors kept in the runtime's anomaly folder
(the one the kernels use: a detector fitted in one is scored by the other). The wire schema:
universal_kernel/tasks/anomaly_wire.py (fit, score, the detectors' list, delete).
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from universal_kernel.errors import ModelNotFound
from universal_kernel.tasks import anomaly_calls as anomaly_task
from universal_kernel.tasks.anomaly_wire import detector_to_wire
from universal_kernel.tasks.anomaly_wire import (
    AnomalyDeleted, AnomalyDetectorBody, AnomalyFitRequest, AnomalyModelsResponse, AnomalyRow, AnomalyScoreRequest,
    AnomalyScoreResponse, AnomalySummary,
)

from ..base_handler import BaseHandler
from ..errors import Failure
from ..serving import Serving
from . import off_loop, post_handler

__all__ = ["AnomalyFitHandler", "AnomalyFitRequest", "AnomalyScoreHandler", "AnomalyScoreRequest", "routes"]


async def fit(serving: Serving, req: AnomalyFitRequest) -> AnomalyDetectorBody | Failure:
    found = await off_loop(lambda: serving.runtime.anomaly_fit(
        req.model, req.data, backend=req.backend, contamination=req.contamination, model=req.embedding_model,
        schema=req.schema_))
    return found if isinstance(found, Failure) else detector_to_wire(found)


async def score(serving: Serving, req: AnomalyScoreRequest) -> AnomalyScoreResponse | Failure:
    found = await off_loop(lambda: serving.runtime.anomaly_score(req.model, req.data, threshold=req.threshold))
    if isinstance(found, Failure):
        return found
    rows = [AnomalyRow(index=i, score=float(s), is_anomaly=bool(flag), raw_score=float(raw))
            for i, (s, flag, raw) in enumerate(zip(found.scores, found.is_anomaly, found.raw_scores))]
    return AnomalyScoreResponse(model=found.name, threshold=found.threshold, data=rows,
                                summary=AnomalySummary.of(found.is_anomaly, found.threshold))


async def models(serving: Serving) -> AnomalyModelsResponse | Failure:
    found = await off_loop(serving.runtime.anomaly_models)
    if isinstance(found, Failure):
        return found
    return AnomalyModelsResponse(data=[detector_to_wire(d) for d in found])


async def delete(serving: Serving, name: str) -> AnomalyDeleted | Failure:
    def work():
        if not serving.runtime.anomaly_delete(name):
            raise ModelNotFound(f"no anomaly detector named {name!r}")
        return AnomalyDeleted(model=name, deleted=True)

    return await off_loop(work)


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
