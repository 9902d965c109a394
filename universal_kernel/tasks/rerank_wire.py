"""Rerank's wire schema, the Jina/Cohere shape that vLLM, llama.cpp and infinity serve:
`POST v1/rerank` `{model, query, documents: [str or {text}], top_n?, return_documents=true}` ->
`{id, object: "rerank", model, results: [{index, relevance_score, document?: {text}}], usage}`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, StrictInt

from .wire_base import OmitsUnset, TaskRequest, TaskUsage


class RerankRequest(TaskRequest):
    query: str
    # strings or {"text": ...} objects; the task's call checks each and names `documents`
    documents: list[Any]
    top_n: StrictInt | None = None  # None: every document
    return_documents: bool = True


class RerankDocument(BaseModel):
    text: str


class RerankHit(OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("document",)  # return_documents=false omits the key, as Cohere does
    index: int  # the document's position in the request
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    object: Literal["rerank"] = "rerank"
    model: str
    results: list[RerankHit]
    usage: TaskUsage
