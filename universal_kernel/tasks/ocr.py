"""OCR: the text of images and PDF pages, line by line, with each page's mean confidence.

Every input is read and checked before a model loads, under this task's limits (`ocr_max_pixels`,
`ocr_max_pages`), by the shared image input (tasks/image_input.py); PDF pages are rendered one at a
time by the model's worker, each just before it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import Cancelled
from ..settings import RUNTIME, SERVER, Setting
from ..stats import RequestStats
from . import TaskCall
from .image_input import ImageLimits, read_inputs

PATH = "v1/ocr"

#: its settings, collected through the registry: `RuntimeConfig(ocr_max_pixels=...)`, `config.ocr_max_pixels`,
#: `c.UniversalKernelApp.ocr_max_pixels`. The document task reads its inputs here, under the same limits.
SETTINGS = (
    Setting("ocr_max_pixels", "int", 40_000_000, "OCR and documents: the most pixels per image or rendered PDF "
            "page, checked from the file's header before anything is decoded.", where={RUNTIME, SERVER}),
    Setting("ocr_max_pages", "int", 50, "OCR and documents: the most pages per PDF.", where={RUNTIME, SERVER}),
)


@dataclass
class OcrBox:
    x1: float  # pixels of the image (or of the page rendered at the OCR's resolution)
    y1: float
    x2: float
    y2: float
    text: str
    confidence: float


@dataclass
class OcrPage:
    index: int  # the input's position
    page: int  # 1 for an image; a PDF's page number, from 1
    text: str  # the lines read, top to bottom, joined by newlines
    confidence: float  # the mean confidence of the lines (0 when nothing was read)
    boxes: list[OcrBox] | None = None  # when asked for


@dataclass
class OcrResult:
    model: str
    pages: list[OcrPage]  # in input order, a PDF's pages in order
    stats: RequestStats | None = None


def ocr(runtime, images, model: str | None = None, *, boxes: bool = False, backend: str = "auto",
        keep_alive: float | None = None) -> OcrResult:
    """The text of images and PDF pages (paths, files' bytes, PIL images, arrays), line by line.

    Every input is read and checked here before a model loads, a path as the runtime reads it
    (`runtime.file_access`: the local runtime's data folders; a server's client reads any path this
    kernel can and sends the bytes, and the server applies its own limits)."""
    return runtime.run(call(images, model, boxes=boxes, backend=backend, keep_alive=keep_alive,
                            **read_options(runtime.file_access("ocr"))))


def read_options(access) -> dict:
    """`call`'s path check and limits under a runtime's `FileAccess` (the limits of its settings, if any)."""
    return {"path_check": access.path_check, **limits(access.settings)}


def limits(config) -> dict:
    """The limits of a RuntimeConfig, as `call`'s keywords: `call(images, model, **limits(config))`; None: no
    limit of ours (a server's client: the server applies its own)."""
    if config is None:
        return {"max_pixels": None, "max_pages": None}
    return {"max_pixels": config.ocr_max_pixels, "max_pages": config.ocr_max_pages}


def image_limits(max_pixels: int | None = None, max_pages: int | None = None) -> ImageLimits:
    """The limits on images and PDFs, named by their settings in the refusals."""
    return ImageLimits(max_pixels, max_pages, pixels_setting="ocr_max_pixels", pages_setting="ocr_max_pages")


def call(images, model: str | None = None, *, boxes: bool = False, backend: str = "auto",
         keep_alive: float | None = None, max_pixels: int | None = None, max_pages: int | None = None,
         path_check: Callable | None = None) -> TaskCall:
    """Read and check every input; nothing loads for a bad one. `path_check(path, param)` finds a path's
    file or refuses it (None: paths are not taken); `max_pixels`/`max_pages` None: no limit of ours."""
    inputs = read_inputs(images, image_limits(max_pixels, max_pages), path_check)
    return TaskCall("ocr", model, {"images": inputs, "boxes": bool(boxes)}, backend, keep_alive)


def work(ctx):
    inputs, boxes = ctx.inputs["images"], ctx.inputs["boxes"]

    def run(instance, emit, cancelled):
        pages = []
        for index, source in enumerate(inputs):
            for number, (image, _) in enumerate(source.pages(), start=1):
                if cancelled():
                    raise Cancelled("the OCR request was cancelled")
                found = instance.read_images([image], boxes=boxes)[0]
                pages.append(OcrPage(index, number, found["text"], float(found["confidence"]),
                                     _boxes(found.get("boxes"), OcrBox) if boxes else None))
        return OcrResult(ctx.spec.id, pages, ctx.stats)

    return run


def _boxes(rows, box_type) -> list:
    return [box_type(float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]), str(b["text"]),
                     float(b["confidence"])) for b in rows or []]


# The wire (the HTTP client runtime; the schema is ocr_wire.py) -------------------------------------
def to_wire(call: TaskCall) -> dict:
    from .image_input import to_base64
    from .ocr_wire import OcrRequest

    return OcrRequest.of(call, images=[to_base64(source) for source in call.inputs["images"]],
                         return_boxes=call.inputs["boxes"]).body()


def from_wire(payload: dict, call: TaskCall, stats):
    from .ocr_wire import OcrResponse
    from .wire_base import read_response

    response = read_response(OcrResponse, payload, call.task)
    rows = sorted(response.data, key=lambda r: (r.index, r.page))
    pages = [OcrPage(r.index, r.page, r.text, r.confidence,
                     [OcrBox(**box.model_dump()) for box in r.boxes or []] if call.inputs["boxes"] else None)
             for r in rows]
    return OcrResult(response.model, pages, stats)
