"""OCR's wire schema: `POST v1/ocr`
`{model?, images: [base64 or data URL of PNG/JPEG/PDF], return_boxes?: false}` ->
`{id, object: "list", model, data: [{index, page, text, confidence, boxes?: [{x1, y1, x2, y2, text, confidence}]}]}`,
one row per image and per PDF page; `boxes` is left out unless asked for. Only file bytes travel: a
server reads no path.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel

from .wire_base import OmitsUnset, TaskRequest


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


class OcrRow(OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("boxes",)
    index: int  # the image's position in the request
    page: int = 1  # 1 for an image; a PDF's page number, from 1
    text: str  # lines top to bottom, joined by newlines
    confidence: float  # mean of the lines, 0 when nothing was read
    boxes: Optional[list[OcrBoxOut]] = None  # only when asked for (return_boxes)


class OcrResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[OcrRow]
