"""Rerank: documents ordered by relevance to a query, best first.

A cross-encoder folder (`*ForSequenceClassification` with one logit) scores each (query, document)
pair, through a sigmoid, in 0..1. Any embedding model serves as a bi-encoder: the cosine of the
query's and each document's vectors (rows come through the embedding cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GenerationFailed, InvalidRequest
from ..stats import RequestStats
from . import TaskCall, check_lengths


@dataclass
class RerankHit:
    index: int  # the document's position in the request
    score: float  # relevance in 0..1 for a cross-encoder; cosine in -1..1 for a bi-encoder
    document: str


@dataclass
class RerankResult:
    model: str
    hits: list[RerankHit]  # best first, `top_n` of them
    prompt_tokens: int
    stats: RequestStats


def rerank(runtime, query: str, documents: list[str], model: str | None = None, top_n: int | None = None, *,
           backend: str = "auto", keep_alive: float | None = None, truncate: bool = False) -> RerankResult:
    """`documents` ordered by relevance to `query`, best first (`top_n` of them): a `RerankResult`."""
    return runtime.run(call(query, documents, model, top_n, backend=backend, keep_alive=keep_alive,
                            truncate=truncate))


def documents_input(documents) -> list[str]:
    """Strings or `{"text": ...}` objects (the Cohere/Jina shape), as strings."""
    if isinstance(documents, str) or not isinstance(documents, (list, tuple)):
        raise InvalidRequest("documents must be a list of strings", param="documents")
    if not documents:
        raise InvalidRequest("documents must not be empty", param="documents")
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, dict):
            doc = doc.get("text")
        if not isinstance(doc, str):
            raise InvalidRequest(f"documents[{i}] must be a string or an object with a text", param="documents")
        texts.append(doc)
    return texts


def top_n_input(top_n) -> int | None:
    if top_n is None:
        return None
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise InvalidRequest(f"top_n must be a whole number of at least 1, not {top_n!r}", param="top_n")
    return int(top_n)


def call(query: str, documents, model: str | None = None, top_n: int | None = None, *, backend: str = "auto",
         keep_alive: float | None = None, truncate: bool = False) -> TaskCall:
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("query must be a non-empty string", param="query")
    inputs = {"query": query, "documents": documents_input(documents), "top_n": top_n_input(top_n),
              "truncate": bool(truncate)}
    return TaskCall("rerank", model, inputs, backend, keep_alive)


def ranked(scores, documents: list[str], top_n: int | None):
    """Hits best first; equal scores keep the documents' order."""
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))
    return [RerankHit(i, float(scores[i]), documents[i]) for i in order[:top_n]]


def work(ctx):
    from .embed import embed_rows

    query, documents, top_n, truncate = (ctx.inputs[k] for k in ("query", "documents", "top_n", "truncate"))

    def run(instance, emit, cancelled):
        if ctx.spec.task == "embed":  # a bi-encoder: cosine of normalised vectors
            check_lengths(instance, [query], truncate, "query")
            check_lengths(instance, documents, truncate, "documents")
            matrix, tokens = embed_rows(ctx, instance, [query, *documents], True)
            scores = matrix[1:] @ matrix[0]
        else:
            scores, tokens = instance.score_pairs(query, documents, truncate=truncate)
        ctx.stats.prompt_tokens = tokens
        return RerankResult(ctx.spec.id, ranked(scores, documents, top_n), tokens, ctx.stats)

    return run


# The wire (the HTTP client runtime; the schema is rerank_wire.py) ---------------------------------
PATH = "v1/rerank"


def to_wire(call: TaskCall) -> dict:
    from .rerank_wire import RerankRequest

    inputs = call.inputs
    return RerankRequest.of(call, query=inputs["query"], documents=inputs["documents"], top_n=inputs["top_n"],
                            truncate=inputs["truncate"], return_documents=False).body()


def from_wire(payload: dict, call: TaskCall, stats):
    from .rerank_wire import RerankResponse
    from .wire_base import read_response

    response = read_response(RerankResponse, payload, call.task)
    documents = call.inputs["documents"]
    if any(not 0 <= hit.index < len(documents) for hit in response.results):
        raise GenerationFailed(f"the server's answer to rerank names a document beyond the {len(documents)} sent")
    hits = [RerankHit(hit.index, hit.relevance_score, documents[hit.index]) for hit in response.results]
    return RerankResult(response.model, hits, response.usage.prompt_tokens, stats)
