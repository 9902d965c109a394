"""`POST universal/v1/documents`: documents parsed into blocks, tables and Markdown.

`{model?, images: [base64 or data URL of PNG/JPEG/PDF]}` ->
`{id, object: "list", model, data: [{index, pages, blocks: [{kind, bbox, text, order, confidence, page, level}],
tables: [{page, bbox, rows: [[cell, ...], ...], confidence}], markdown}]}`, one row per input, each table's
header row first. Boxes are pixels of the page image (a PDF page rendered at 144 dpi). Inputs and limits
are OCR's (server_ext/tasks/ocr.py): only file bytes arrive, no path is ever read.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel

from universal_kernel.tasks import document as document_task
from universal_kernel.tasks import ocr as ocr_task

from .. import protocol as p
from ..errors import Failure, failure_from
from ..serving import Serving
from . import TaskRequest, post_handler, serve


class DocumentRequest(TaskRequest):
    images: list[str]  # base64 or data URLs (data:application/pdf;base64,...)


class BlockOut(BaseModel):
    kind: str  # title, text, table, figure, caption, header, footer, reference, equation
    bbox: list[float]  # x1, y1, x2, y2
    text: str
    order: int  # reading order on its page, from 0
    confidence: float
    page: int
    level: int  # a title's heading level, 0 for other kinds


class TableOut(BaseModel):
    page: int
    bbox: list[float]
    rows: list[list[str]]  # the header row first
    confidence: float


class DocumentRow(BaseModel):
    index: int  # the input's position in the request
    pages: int
    blocks: list[BlockOut]
    tables: list[TableOut]
    markdown: str


class DocumentResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[DocumentRow]


def build_call(serving: Serving, req: DocumentRequest):
    config = serving.runtime.config
    files = [ocr_task.decode_image(value, i) for i, value in enumerate(req.images)]
    return document_task.call(files, req.model, backend=req.backend, keep_alive=req.keep_alive,
                              max_pixels=config.ocr_max_pixels, max_pages=config.ocr_max_pages)


async def documents(serving: Serving, req: DocumentRequest) -> dict | Failure:
    def respond(result) -> dict:
        rows = [DocumentRow(**document.to_dict()) for document in result.documents]
        return DocumentResponse(id=p.new_id("doc"), model=result.model, data=rows).model_dump()

    # decoding and checking the files takes a while on big ones: off the event loop
    try:
        call = await asyncio.get_running_loop().run_in_executor(None, build_call, serving, req)
    except Exception as exc:  # noqa: BLE001 - a broken input is a typed failure (400), as in `serve`
        return failure_from(exc)
    return await serve(serving.runtime, lambda: call, respond)


DocumentHandler = post_handler(DocumentRequest, documents)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{document_task.PATH}/?", DocumentHandler)]  # the path the client runtime posts to
