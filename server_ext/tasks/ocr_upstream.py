"""OCR in the compatibility door's shape (LlamaFarm's `POST /v1/ocr`: routers/ocr/types.py OCRRequest, the
dict routers/ocr/router.py returns). Upstream's engines (surya, easyocr, ...) are not here: rapidocr is."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import BaseModel

from universal_kernel.tasks import ocr as ocr_task
from universal_kernel.tasks.image_input import decode_all
from universal_kernel.tasks.wire_base import OmitsUnset

from ..errors import Failure, failure
from ..serving import Serving
from ..upstream.base import unsupported, upstream_post_handler
from ..upstream.wire import UpstreamRequest
from . import serve

#: the OCR engines upstream names; none of them is here (rapidocr is)
UPSTREAM_OCR_ENGINES = ("surya", "easyocr", "paddleocr", "tesseract")
#: languages the PP-OCR models in rapidocr's wheel read
OCR_LANGUAGES = {"en", "ch", "zh", "chinese", "english"}


class OcrRequest(UpstreamRequest):
    model: Optional[str] = None  # upstream's default engine is surya; omitted here means this runtime's own
    images: Optional[list[str]] = None
    file_id: Optional[str] = None
    languages: Optional[list[str]] = None
    return_boxes: bool = False


class OcrBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    text: str
    confidence: float


class OcrResult(OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("boxes",)
    index: int
    text: str
    confidence: float
    boxes: Optional[list[OcrBox]] = None  # only when return_boxes (the key is left out otherwise)


class ImagesUsage(BaseModel):
    images_processed: int


class OcrResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OcrResult]
    model: str
    usage: ImagesUsage


def _refusal(req: OcrRequest) -> Failure | None:
    if req.model is not None and req.model.lower() in UPSTREAM_OCR_ENGINES:
        return failure(400, f"OCR engine {req.model!r} is not available here; this runtime reads with 'rapidocr' "
                            f"(PP-OCR): send model: \"rapidocr\"", param="model", code="model_not_available")
    if req.file_id is not None:
        return unsupported("file_id", "file_id is not supported here (there is no /v1/files upload): send the "
                                      "images themselves, base64-encoded, in images")
    if not req.images:
        return failure(400, "images must be a non-empty list of base64-encoded images", param="images",
                       code="invalid_value")
    unknown = [lang for lang in req.languages or [] if lang.lower() not in OCR_LANGUAGES]
    if unknown:
        return failure(400, f"rapidocr reads English and Chinese; not {', '.join(unknown)}", param="languages",
                       code="invalid_value")
    return None


async def ocr(serving: Serving, req: OcrRequest):
    refused = _refusal(req)
    if refused:
        return refused

    def build():
        return ocr_task.call(decode_all(req.images), req.model, boxes=req.return_boxes,
                             **ocr_task.limits(serving.runtime.config))

    def respond(result) -> OcrResponse:
        # one row per image (and per PDF page, which upstream does not read), numbered as upstream does
        data = [OcrResult(index=i, text=page.text, confidence=page.confidence,
                          boxes=None if page.boxes is None else [OcrBox(**vars(box)) for box in page.boxes])
                for i, page in enumerate(result.pages)]
        return OcrResponse(data=data, model=result.model, usage=ImagesUsage(images_processed=len(req.images)))

    return await serve(serving.runtime, build, respond, build_off_loop=True)


OcrDoor = upstream_post_handler(OcrRequest, ocr)


def door_routes() -> list[tuple[str, type]]:
    """Relative to the door's root (`universal/runtime/`)."""
    return [(r"v1/ocr/?", OcrDoor)]
