"""Rerank in the compatibility door's shape (LlamaFarm's `POST /v1/rerank`, api_types/nlp.py
RerankRequest / RerankResult / RerankResponse): upstream's `top_k` is Cohere's `top_n`, a hit's
`document` is the text itself."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel

from universal_kernel.tasks import rerank as rerank_task
from universal_kernel.tasks.wire_base import OmitsUnset

from ..serving import Serving
from ..upstream.base import upstream_post_handler
from ..upstream.wire import UpstreamRequest, Usage
from . import serve


class RerankRequest(UpstreamRequest):
    model: str
    query: str
    documents: list[str]
    top_k: Optional[int] = None
    return_documents: bool = True


class RerankResult(OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("document",)
    index: int
    relevance_score: float
    document: Optional[str] = None  # only when return_documents (the key is left out otherwise)


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[RerankResult]
    model: str
    usage: Usage


async def rerank(serving: Serving, req: RerankRequest):
    def respond(result) -> RerankResponse:
        data = [RerankResult(index=hit.index, relevance_score=hit.score,
                             document=hit.document if req.return_documents else None) for hit in result.hits]
        return RerankResponse(data=data, model=result.model,
                              usage=Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens))

    # upstream's top_k is Cohere's top_n: the number of best documents returned
    return await serve(serving.runtime, lambda: rerank_task.call(req.query, req.documents, req.model, req.top_k),
                       respond)


RerankDoor = upstream_post_handler(RerankRequest, rerank)


def door_routes() -> list[tuple[str, type]]:
    """Relative to the door's root (`universal/runtime/`)."""
    return [(r"v1/rerank/?", RerankDoor)]
