"""The compatibility door's handlers: upstream-shaped requests mapped to this runtime's task calls,
its typed results mapped back to upstream's response shapes (`wire.py`).

Errors keep this server's OpenAI body and add upstream's FastAPI key, `detail` (the same message), so
a client written for either reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from datetime import datetime, timezone
from typing import Any, Callable

from jupyter_server.auth.decorator import authorized
from pydantic import BaseModel
from tornado import web

from universal_kernel.tasks import classify as classify_task
from universal_kernel.tasks import ner as ner_task
from universal_kernel.tasks import ocr as ocr_task
from universal_kernel.tasks import rerank as rerank_task

from .. import protocol as p
from ..errors import Failure, failure, failure_from
from ..handlers import BaseHandler, ChatCompletionsHandler, EmbeddingsHandler, ModelsHandler
from ..serving import Serving, parse
from ..tasks import serve
from . import anomaly_door
from . import wire as w

#: the OCR engines upstream names; none of them is here (rapidocr is)
UPSTREAM_OCR_ENGINES = ("surya", "easyocr", "paddleocr", "tesseract")
#: languages the PP-OCR models in rapidocr's wheel read
OCR_LANGUAGES = {"en", "ch", "zh", "chinese", "english"}
#: a GGUF quantization suffix on an embeddings model name (`org/repo:Q4_K_M`)
_QUANT_SUFFIX = re.compile(r":(?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


class _DetailedFailure(Failure):
    def json(self) -> str:
        body = self.body.model_dump()
        return json.dumps({"detail": body["error"]["message"], **body})


class UpstreamErrors:
    """Mixed into a handler: its failures carry upstream's `detail` beside the OpenAI `error`."""

    def send_failure(self, fail: Failure) -> None:
        super().send_failure(_DetailedFailure(fail.status, fail.body, fail.headers))  # type: ignore[misc]


class UpstreamHandler(UpstreamErrors, BaseHandler):
    pass


def _post(request_type: type[BaseModel], answer: Callable[[Serving, Any], Any]) -> type[BaseHandler]:
    class UpstreamPostHandler(UpstreamHandler):
        @web.authenticated
        @authorized
        async def post(self):
            req = parse(request_type, self.request.body)
            self.send(req if isinstance(req, Failure) else await answer(self.serving, req))

    UpstreamPostHandler.__name__ = UpstreamPostHandler.__qualname__ = "Upstream" + request_type.__name__.removesuffix(
        "Request") + "Handler"
    return UpstreamPostHandler


def _no_max_length(value: int | None) -> Failure | None:
    if value is None:
        return None
    return failure(400, "max_length is not supported here: texts longer than the model's limit are refused; "
                        "send truncate: true to cut them at the model's own limit", param="max_length",
                   code="unsupported_parameter")


# Rerank, classify, NER --------------------------------------------------------------------------------
async def rerank(serving: Serving, req: w.RerankRequest):
    def respond(result) -> w.RerankResponse:
        data = [w.RerankResult(index=hit.index, relevance_score=hit.score,
                               document=hit.document if req.return_documents else None) for hit in result.hits]
        return w.RerankResponse(data=data, model=result.model,
                                usage=w.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens))

    # upstream's top_k is Cohere's top_n: the number of best documents returned
    return await serve(serving.runtime, lambda: rerank_task.call(req.query, req.documents, req.model, req.top_k),
                       respond)


async def classify(serving: Serving, req: w.ClassifyRequest):
    refused = _no_max_length(req.max_length)
    if refused:
        return refused

    def respond(result) -> w.ClassifyResponse:
        data = [w.ClassifyResult(index=i, label=row.label, score=row.score, all_scores=row.scores)
                for i, row in enumerate(result.rows)]
        return w.ClassifyResponse(data=data, total_count=len(data), model=result.model,
                                  usage=w.TextsUsage(texts_processed=len(req.texts)))

    return await serve(serving.runtime, lambda: classify_task.call(req.texts, req.model, req.labels,
                                                                   truncate=req.truncate), respond)


async def ner(serving: Serving, req: w.NerRequest):
    refused = _no_max_length(req.max_length)
    if refused:
        return refused

    def respond(result) -> w.NerResponse:
        data = [w.NerResult(index=i, entities=[w.EntityResult(text=e.text, label=e.label, start=e.start, end=e.end,
                                                              score=e.score) for e in entities])
                for i, entities in enumerate(result.rows)]
        return w.NerResponse(data=data, model=result.model, usage=w.TextsUsage(texts_processed=len(req.texts)))

    return await serve(serving.runtime, lambda: ner_task.call(req.texts, req.model, truncate=req.truncate), respond)


# OCR --------------------------------------------------------------------------------------------------
def _ocr_refusal(req: w.OcrRequest) -> Failure | None:
    if req.model is not None and req.model.lower() in UPSTREAM_OCR_ENGINES:
        return failure(400, f"OCR engine {req.model!r} is not available here; this runtime reads with 'rapidocr' "
                            f"(PP-OCR): send model: \"rapidocr\"", param="model", code="model_not_available")
    if req.file_id is not None:
        return failure(400, "file_id is not supported here (there is no /v1/files upload): send the images "
                            "themselves, base64-encoded, in images", param="file_id", code="unsupported_parameter")
    if not req.images:
        return failure(400, "images must be a non-empty list of base64-encoded images", param="images",
                       code="invalid_value")
    unknown = [lang for lang in req.languages or [] if lang.lower() not in OCR_LANGUAGES]
    if unknown:
        return failure(400, f"rapidocr reads English and Chinese; not {', '.join(unknown)}", param="languages",
                       code="invalid_value")
    return None


async def ocr(serving: Serving, req: w.OcrRequest):
    refused = _ocr_refusal(req)
    if refused:
        return refused
    config = serving.runtime.config

    def build():
        files = [ocr_task.decode_image(value, i) for i, value in enumerate(req.images)]
        return ocr_task.call(files, req.model, boxes=req.return_boxes, max_pixels=config.ocr_max_pixels,
                             max_pages=config.ocr_max_pages)

    def respond(result) -> w.OcrResponse:
        # one row per image (and per PDF page, which upstream does not read), numbered as upstream does
        data = [w.OcrResult(index=i, text=page.text, confidence=page.confidence,
                            boxes=None if page.boxes is None else [w.OcrBox(**vars(box)) for box in page.boxes])
                for i, page in enumerate(result.pages)]
        return w.OcrResponse(data=data, model=result.model, usage=w.ImagesUsage(images_processed=len(req.images)))

    try:  # decoding and checking big images takes a while: off the event loop
        call = await asyncio.get_running_loop().run_in_executor(None, build)
    except Exception as exc:  # noqa: BLE001 - a broken input is a typed failure (400)
        return failure_from(exc)
    return await serve(serving.runtime, lambda: call, respond)


# Health, embeddings, chat, models ----------------------------------------------------------------------
def _device() -> dict[str, Any]:
    from universal_kernel.devices import cpu_threads, loaded_torch

    torch = loaded_torch()  # only if a model already imported it: a health check loads nothing
    cuda = bool(torch is not None and torch.cuda.is_available())
    info: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "cpu_threads": cpu_threads()}
    if cuda:
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


class HealthHandler(UpstreamHandler):
    @web.authenticated
    @authorized
    async def get(self):
        try:
            status = await asyncio.get_running_loop().run_in_executor(None, self.serving.runtime.status)
        except Exception as exc:  # noqa: BLE001
            return self.send_failure(failure_from(exc))
        self.send(w.HealthResponse(device=_device(), loaded_models=[m["id"] for m in status["models"]],
                                   timestamp=datetime.now(timezone.utc).isoformat(), pid=os.getpid()))


class EmbeddingsDoor(UpstreamErrors, EmbeddingsHandler):
    """Upstream accepts `org/repo:Q4_K_M`: the quantization suffix is dropped, the model is the file the
    reference resolves to (its own quantization)."""

    @web.authenticated
    @authorized
    async def post(self):
        req = parse(p.EmbeddingRequest, self.request.body)
        if isinstance(req, Failure):
            return self.send_failure(req)
        if req.model:
            req.model = _QUANT_SUFFIX.sub("", req.model)
        self.send(await self.serving.embeddings(req))


class ChatDoor(UpstreamErrors, ChatCompletionsHandler):
    pass


class ModelsDoor(UpstreamErrors, ModelsHandler):
    pass


RerankDoor = _post(w.RerankRequest, rerank)
ClassifyDoor = _post(w.ClassifyRequest, classify)
NerDoor = _post(w.NerRequest, ner)
OcrDoor = _post(w.OcrRequest, ocr)
AnomalyFitDoor = _post(w.AnomalyFitRequest, anomaly_door.fit)
AnomalyScoreDoor = _post(w.AnomalyScoreRequest, anomaly_door.score)


def routes() -> list[tuple[str, type]]:
    """The door's routes, relative to the server's base_url."""
    door = r"universal/runtime"
    return [
        (rf"{door}/health/?", HealthHandler),
        (rf"{door}/v1/models/?", ModelsDoor),
        (rf"{door}/v1/chat/completions/?", ChatDoor),
        (rf"{door}/v1/embeddings/?", EmbeddingsDoor),
        (rf"{door}/v1/rerank/?", RerankDoor),
        (rf"{door}/v1/classify/?", ClassifyDoor),
        (rf"{door}/v1/ner/?", NerDoor),
        (rf"{door}/v1/ocr/?", OcrDoor),
        (rf"{door}/v1/anomaly/fit/?", AnomalyFitDoor),
        (rf"{door}/v1/anomaly/score/?", AnomalyScoreDoor),
    ]
