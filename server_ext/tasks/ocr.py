"""`POST universal/v1/ocr`: the text of images and PDF pages (the wire schema:
universal_kernel/tasks/ocr_wire.py). Only file bytes arrive over HTTP: no path is ever read."""

from __future__ import annotations

from universal_kernel.tasks import ocr as ocr_task
from universal_kernel.tasks.image_input import decode_all
from universal_kernel.tasks.ocr_wire import OcrBoxOut, OcrRequest, OcrResponse, OcrRow
from universal_kernel.tasks.wire_base import new_id

from ..errors import Failure
from ..serving import Serving
from . import post_handler, serve

__all__ = ["OcrHandler", "OcrRequest", "OcrResponse", "ocr", "routes"]


async def ocr(serving: Serving, req: OcrRequest) -> OcrResponse | Failure:
    def build():
        return ocr_task.call(decode_all(req.images), req.model, boxes=req.return_boxes, backend=req.backend,
                             keep_alive=req.keep_alive, **ocr_task.limits(serving.runtime.config))

    def respond(result) -> OcrResponse:
        rows = [OcrRow(index=page.index, page=page.page, text=page.text, confidence=page.confidence,
                       boxes=None if page.boxes is None else [OcrBoxOut(**vars(box)) for box in page.boxes])
                for page in result.pages]
        return OcrResponse(id=new_id("ocr"), model=result.model, data=rows)

    return await serve(serving.runtime, build, respond, build_off_loop=True)


OcrHandler = post_handler(OcrRequest, ocr)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{ocr_task.PATH}/?", OcrHandler)]  # the path the client runtime posts to
