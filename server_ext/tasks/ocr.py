"""`POST universal/v1/ocr`: the text of images and PDF pages.

`{model?, images: [base64 or data URL of PNG/JPEG/PDF], return_boxes?: false}` ->
`{id, object: "list", model, data: [{index, page, text, confidence, boxes?: [{x1, y1, x2, y2, text, confidence}]}]}`,
one row per image and per PDF page. Only file bytes arrive over HTTP: no path is ever read.
"""

from __future__ import annotations

import asyncio
from typing import Literal, Optional

from pydantic import BaseModel

from universal_kernel.tasks import ocr as ocr_task

from .. import protocol as p
from ..errors import Failure, failure_from
from ..serving import Serving
from . import TaskRequest, post_handler, serve


class OcrRequest(TaskRequest):
    images: list[str]  # base64 or data URLs (data:image/png;base64,...)
    return_boxes: bool = False


class OcrBoxOut(BaseModel):
    x1: float  # pixels of the image (of a PDF page rendered at 144 dpi)
    y1: float
    x2: float
    y2: float
    text: str
    confidence: float


class OcrRow(BaseModel):
    index: int  # the image's position in the request
    page: int  # 1 for an image; a PDF's page number, from 1
    text: str  # lines top to bottom, joined by newlines
    confidence: float  # mean of the lines, 0 when nothing was read
    boxes: Optional[list[OcrBoxOut]] = None  # only when asked for (return_boxes)


class OcrResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[OcrRow]


def build_call(serving: Serving, req: OcrRequest):
    config = serving.runtime.config
    files = [ocr_task.decode_image(value, i) for i, value in enumerate(req.images)]
    return ocr_task.call(files, req.model, boxes=req.return_boxes, backend=req.backend, keep_alive=req.keep_alive,
                         max_pixels=config.ocr_max_pixels, max_pages=config.ocr_max_pages)


async def ocr(serving: Serving, req: OcrRequest) -> dict | Failure:
    def respond(result) -> dict:
        rows = [OcrRow(index=page.index, page=page.page, text=page.text, confidence=page.confidence,
                       boxes=None if page.boxes is None else [OcrBoxOut(**vars(box)) for box in page.boxes])
                for page in result.pages]
        # `boxes` is left out unless asked for, rather than sent as null
        return OcrResponse(id=p.new_id("ocr"), model=result.model, data=rows).model_dump(exclude_none=True)

    # decoding and checking the images takes a while on big files: off the event loop
    try:
        call = await asyncio.get_running_loop().run_in_executor(None, build_call, serving, req)
    except Exception as exc:  # noqa: BLE001 - a broken input is a typed failure (400), as in `serve`
        return failure_from(exc)
    return await serve(serving.runtime, lambda: call, respond)


OcrHandler = post_handler(OcrRequest, ocr)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{ocr_task.PATH}/?", OcrHandler)]  # the path the client runtime posts to
