"""`POST universal/v1/rerank`: documents ordered by relevance to a query, best first (the wire schema:
universal_kernel/tasks/rerank_wire.py, the Jina/Cohere shape)."""

from __future__ import annotations

from universal_kernel.tasks import rerank as rerank_task
from universal_kernel.tasks.rerank_wire import RerankDocument, RerankHit, RerankRequest, RerankResponse
from universal_kernel.tasks.wire_base import TaskUsage, new_id

from ..errors import Failure
from ..serving import Serving
from . import post_handler, serve

__all__ = ["RerankHandler", "RerankRequest", "RerankResponse", "rerank", "routes"]


async def rerank(serving: Serving, req: RerankRequest) -> RerankResponse | Failure:
    def respond(result) -> RerankResponse:
        hits = [RerankHit(index=hit.index, relevance_score=hit.score,
                          document=RerankDocument(text=hit.document) if req.return_documents else None)
                for hit in result.hits]
        return RerankResponse(id=new_id("rerank"), model=result.model, results=hits,
                              usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: rerank_task.call(req.query, req.documents, req.model, req.top_n,
                                                                 **req.options()), respond)


RerankHandler = post_handler(RerankRequest, rerank)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{rerank_task.PATH}/?", RerankHandler)]  # the path the client runtime posts to
