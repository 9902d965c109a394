"""Classify in the compatibility door's shape (LlamaFarm's `POST /v1/classify`, api_types/nlp.py;
routers/embeddings/router.py), with two extensions: zero-shot `labels` (an embedding or chat model
needs them) and `truncate` at the model's own limit."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from universal_kernel.tasks import classify as classify_task

from ..serving import Serving
from ..upstream.base import refuse_max_length, upstream_post_handler
from ..upstream.wire import TextsUsage, UpstreamRequest
from . import serve


class ClassifyRequest(UpstreamRequest):
    model: str
    texts: list[str]
    max_length: Optional[int] = None
    labels: Optional[list[str]] = None
    truncate: bool = False


class ClassifyResult(BaseModel):
    index: int
    label: str
    score: float
    all_scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ClassifyResult]
    total_count: int
    model: str
    usage: TextsUsage


async def classify(serving: Serving, req: ClassifyRequest):
    refused = refuse_max_length(req.max_length)
    if refused:
        return refused

    def respond(result) -> ClassifyResponse:
        data = [ClassifyResult(index=i, label=row.label, score=row.score, all_scores=row.scores)
                for i, row in enumerate(result.rows)]
        return ClassifyResponse(data=data, total_count=len(data), model=result.model,
                                usage=TextsUsage(texts_processed=len(req.texts)))

    return await serve(serving.runtime, lambda: classify_task.call(req.texts, req.model, req.labels,
                                                                   truncate=req.truncate), respond)


ClassifyDoor = upstream_post_handler(ClassifyRequest, classify)


def door_routes() -> list[tuple[str, type]]:
    """Relative to the door's root (`universal/runtime/`)."""
    return [(r"v1/classify/?", ClassifyDoor)]
