"""NER in the compatibility door's shape (LlamaFarm's `POST /v1/ner`, api_types/nlp.py), with
`truncate` at the model's own limit as an extension."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from universal_kernel.tasks import ner as ner_task

from ..serving import Serving
from ..upstream.base import refuse_max_length, upstream_post_handler
from ..upstream.wire import TextsUsage, UpstreamRequest
from . import serve


class NerRequest(UpstreamRequest):
    model: str
    texts: list[str]
    max_length: Optional[int] = None
    truncate: bool = False  # extension, as for classify


class EntityResult(BaseModel):
    text: str
    label: str
    start: int
    end: int
    score: float


class NerResult(BaseModel):
    index: int
    entities: list[EntityResult]


class NerResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[NerResult]
    model: str
    usage: TextsUsage


async def ner(serving: Serving, req: NerRequest):
    refused = refuse_max_length(req.max_length)
    if refused:
        return refused

    def respond(result) -> NerResponse:
        data = [NerResult(index=i, entities=[EntityResult(text=e.text, label=e.label, start=e.start, end=e.end,
                                                          score=e.score) for e in entities])
                for i, entities in enumerate(result.rows)]
        return NerResponse(data=data, model=result.model, usage=TextsUsage(texts_processed=len(req.texts)))

    return await serve(serving.runtime, lambda: ner_task.call(req.texts, req.model, truncate=req.truncate), respond)


NerDoor = upstream_post_handler(NerRequest, ner)


def door_routes() -> list[tuple[str, type]]:
    """Relative to the door's root (`universal/runtime/`)."""
    return [(r"v1/ner/?", NerDoor)]
