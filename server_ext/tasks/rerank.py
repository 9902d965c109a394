"""`POST universal/v1/rerank`: documents ordered by relevance to a query, best first.

The Jina/Cohere shape that vLLM, llama.cpp and infinity serve:
`{model, query, documents: [str or {text}], top_n?, return_documents=true}` ->
`{id, object: "rerank", model, results: [{index, relevance_score, document?: {text}}], usage}`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, StrictInt, model_serializer

from universal_kernel.tasks import rerank as rerank_task

from .. import protocol as p
from ..errors import Failure
from ..serving import Serving
from . import TaskRequest, TaskUsage, post_handler, serve


class RerankRequest(TaskRequest):
    query: str
    # strings or {"text": ...} objects; the task's call checks each and names `documents`
    documents: list[Any]
    top_n: StrictInt | None = None  # None: every document
    return_documents: bool = True


class RerankDocument(BaseModel):
    text: str


class RerankHit(BaseModel):
    index: int  # the document's position in the request
    relevance_score: float
    document: RerankDocument | None = None

    @model_serializer(mode="wrap")
    def _without_absent_document(self, handler):
        # return_documents=false omits the key (as Cohere does) rather than sending null
        data = handler(self)
        if data.get("document") is None:
            data.pop("document", None)
        return data


class RerankResponse(BaseModel):
    id: str
    object: Literal["rerank"] = "rerank"
    model: str
    results: list[RerankHit]
    usage: TaskUsage


async def rerank(serving: Serving, req: RerankRequest) -> RerankResponse | Failure:
    def respond(result) -> RerankResponse:
        hits = [RerankHit(index=hit.index, relevance_score=hit.score,
                          document=RerankDocument(text=hit.document) if req.return_documents else None)
                for hit in result.hits]
        return RerankResponse(id=p.new_id("rerank"), model=result.model, results=hits,
                              usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: rerank_task.call(req.query, req.documents, req.model, req.top_n,
                                                                 **req.options()), respond)


RerankHandler = post_handler(RerankRequest, rerank)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{rerank_task.PATH}/?", RerankHandler)]  # the path the client runtime posts to
