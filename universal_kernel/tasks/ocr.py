"""OCR: the text of images and PDF pages, line by line, with each page's mean confidence.

Every input is read and checked here, before a model loads: its format (PNG, JPEG or PDF), its size
against the limits (pixels per image or rendered page, pages per PDF) from its header, before anything
is decoded, so that a huge image or a PDF bomb is refused without taking the memory it claims. Images
are then decoded (a broken file is refused here too); PDF pages are rendered one at a time by the
model's worker, each just before it is read.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import Cancelled, InvalidRequest, RuntimeFailure
from ..settings import RUNTIME, SERVER, Setting
from ..stats import RequestStats
from . import TaskCall

#: its settings, collected through the registry: `RuntimeConfig(ocr_max_pixels=...)`, `config.ocr_max_pixels`,
#: `c.UniversalKernelApp.ocr_max_pixels`. The document task reads its inputs here, under the same limits.
SETTINGS = (
    Setting("ocr_max_pixels", "int", 40_000_000, "OCR and documents: the most pixels per image or rendered PDF "
            "page, checked from the file's header before anything is decoded.", where={RUNTIME, SERVER}),
    Setting("ocr_max_pages", "int", 50, "OCR and documents: the most pages per PDF.", where={RUNTIME, SERVER}),
)


def limits(config) -> dict:
    """The limits of a RuntimeConfig, as `call`'s keywords: `call(images, model, **limits(config))`."""
    return {"max_pixels": config.ocr_max_pixels, "max_pages": config.ocr_max_pages}


#: PDF pages are rendered at 144 dpi (PDF points are 1/72 inch): small print stays readable
PDF_RENDER_SCALE = 2.0

_PNG, _JPEG, _PDF = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"%PDF-"
_NOT_SUPPORTED = "not a PNG, JPEG or PDF"


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
    """`call`'s path check and limits under a runtime's `FileAccess` (the OCR limits of its settings)."""
    settings = access.settings
    return {"path_check": access.path_check,
            "max_pixels": None if settings is None else settings.ocr_max_pixels,
            "max_pages": None if settings is None else settings.ocr_max_pages}


@dataclass
class ImageInput:
    """One image, decoded: RGB uint8, HxWx3. `data` is its file (PNG or JPEG) when it came as one."""

    array: np.ndarray
    data: bytes | None = None

    page_count = 1

    def pages(self):
        yield self.array


@dataclass
class PdfInput:
    """A PDF whose page count and page sizes are checked; its pages are rendered when read."""

    data: bytes
    page_count: int
    position: int  # the input's position, for the errors of a page that fails to render

    def pages(self):
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(self.data)
        try:
            for number in range(self.page_count):
                page = document[number]
                try:
                    bitmap = page.render(scale=PDF_RENDER_SCALE)
                    yield np.array(bitmap.to_pil().convert("RGB"))  # a copy: the bitmap is freed below
                    bitmap.close()
                except pdfium.PdfiumError as exc:
                    raise InvalidRequest(f"images[{self.position}]: page {number + 1} cannot be rendered: {exc}",
                                         param="images") from None
                finally:
                    page.close()
        finally:
            document.close()


def call(images, model: str | None = None, *, boxes: bool = False, backend: str = "auto",
         keep_alive: float | None = None, max_pixels: int | None = None, max_pages: int | None = None,
         path_check: Callable | None = None) -> TaskCall:
    """Read and check every input; nothing loads for a bad one. `path_check(path, param)` finds a path's
    file or refuses it (None: paths are not taken); `max_pixels`/`max_pages` None: no limit of ours."""
    items = _as_list(images)
    if not items:
        raise InvalidRequest("images must not be empty", param="images")
    limits = _Limits(max_pixels, max_pages)
    inputs = [_read_input(item, i, limits, path_check) for i, item in enumerate(items)]
    return TaskCall("ocr", model, {"images": inputs, "boxes": bool(boxes)}, backend, keep_alive)


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]  # one path, file's bytes, PIL image or array


@dataclass
class _Limits:
    max_pixels: int | None
    max_pages: int | None

    def check_pixels(self, width: float, height: float, what: str) -> None:
        pixels = int(width) * int(height)
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise InvalidRequest(f"{what} has {int(width)}x{int(height)} = {pixels:,} pixels; the limit is "
                                 f"{self.max_pixels:,} pixels per image (ocr_max_pixels)", param="images")


def _read_input(item, i: int, limits: _Limits, path_check):
    name = f"images[{i}]"
    if isinstance(item, (str, os.PathLike)):
        if path_check is None:
            raise InvalidRequest(f"{name}: paths are not taken here; send the file's bytes", param="images")
        try:
            path = path_check(item, "images")
        except RuntimeFailure as exc:  # which input it was, as for every other refusal
            raise type(exc)(f"{name}: {exc.message}", param="images") from None
        try:
            item = path.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"{name}: cannot read {str(path)!r}: {exc.strerror or exc}", param="images") from None
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _read_file(bytes(item), i, limits)
    if isinstance(item, np.ndarray):
        return ImageInput(_rgb_array(item, name, limits))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with the OCR dependencies
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        limits.check_pixels(*item.size, name)
        return ImageInput(np.array(item.convert("RGB")))
    raise InvalidRequest(f"{name}: a path, the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array, "
                         f"not {type(item).__name__}", param="images")


def _rgb_array(array: np.ndarray, name: str, limits: _Limits) -> np.ndarray:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidRequest(f"{name}: an image array is HxW or HxWx3/4 uint8, not {array.dtype} "
                             f"{'x'.join(map(str, array.shape))}", param="images")
    limits.check_pixels(array.shape[1], array.shape[0], name)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])  # alpha dropped: text is read from the colours


def _read_file(data: bytes, i: int, limits: _Limits):
    name = f"images[{i}]"
    if data.startswith(_PDF):
        return _read_pdf(data, i, limits)
    if not (data.startswith(_PNG) or data.startswith(_JPEG)):
        raise InvalidRequest(f"{name}: {_NOT_SUPPORTED}", param="images")
    from PIL import Image, ImageOps

    try:
        # the header only: the size is known, nothing is decoded yet
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        # PIL's own guard (Image.MAX_IMAGE_PIXELS) refuses an image over twice its limit from the header
        limit = f"the limit is {limits.max_pixels:,} pixels per image (ocr_max_pixels)" if limits.max_pixels \
            else "too large to decode safely"
        raise InvalidRequest(f"{name}: {limit}: {exc}", param="images") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... on broken headers
        raise InvalidRequest(f"{name}: a broken {_kind(data)} file: {exc}", param="images") from None
    limits.check_pixels(*image.size, name)
    try:
        image.load()
        # a photo's EXIF orientation, as a viewer shows it (boxes are in the turned image's pixels)
        array = np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt body
        raise InvalidRequest(f"{name}: a broken {_kind(data)} file: {exc}", param="images") from None
    return ImageInput(array, data)


def _kind(data: bytes) -> str:
    return "PNG" if data.startswith(_PNG) else "JPEG"


def _read_pdf(data: bytes, i: int, limits: _Limits) -> PdfInput:
    import pypdfium2 as pdfium

    name = f"images[{i}]"
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise InvalidRequest(f"{name}: a broken PDF file: {exc}", param="images") from None
    try:
        count = len(document)
        if limits.max_pages is not None and count > limits.max_pages:
            raise InvalidRequest(f"{name}: the PDF has {count} pages; the limit is {limits.max_pages} pages per "
                                 f"PDF (ocr_max_pages)", param="images")
        if count == 0:
            raise InvalidRequest(f"{name}: the PDF has no pages", param="images")
        for number in range(count):
            # the size in points, from the page's dictionary: nothing is rendered yet
            width, height = document.get_page_size(number)
            limits.check_pixels(round(width * PDF_RENDER_SCALE), round(height * PDF_RENDER_SCALE),
                                f"{name} page {number + 1} (rendered at {72 * PDF_RENDER_SCALE:.0f} dpi)")
    except pdfium.PdfiumError as exc:
        raise InvalidRequest(f"{name}: a broken PDF file: {exc}", param="images") from None
    finally:
        document.close()
    return PdfInput(data, count, i)


def work(ctx):
    inputs, boxes = ctx.inputs["images"], ctx.inputs["boxes"]

    def run(instance, emit, cancelled):
        pages = []
        for index, source in enumerate(inputs):
            for number, array in enumerate(source.pages(), start=1):
                if cancelled():
                    raise Cancelled("the OCR request was cancelled")
                found = instance.read_images([array], boxes=boxes)[0]
                pages.append(OcrPage(index, number, found["text"], float(found["confidence"]),
                                     _boxes(found.get("boxes"), OcrBox) if boxes else None))
        return OcrResult(ctx.spec.id, pages, ctx.stats)

    return run


def _boxes(rows, box_type) -> list:
    return [box_type(float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]), str(b["text"]),
                     float(b["confidence"])) for b in rows or []]


# The wire (the HTTP client runtime) ----------------------------------------------------------------
PATH = "v1/ocr"


def to_wire(call: TaskCall) -> dict:
    return {"model": call.model, "images": [_to_base64(source) for source in call.inputs["images"]],
            "return_boxes": call.inputs["boxes"]}


def _to_base64(source) -> str:
    data = source.data
    if data is None:  # a PIL image or an array: sent as a PNG, lossless
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(source.array).save(buffer, "PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode("ascii")


def decode_image(value: str, i: int) -> bytes:
    """A base64 string or a data URL (`data:image/png;base64,...`) as the file's bytes (the server's side)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"images[{i}]: a base64 string or a data URL", param="images")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidRequest(f"images[{i}]: a data URL must be base64 (data:image/png;base64,...)",
                                 param="images")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        if any(mark in text for mark in ".~\\"):  # never in base64, common in a path
            raise InvalidRequest(f"images[{i}]: {text[:200]!r} is not base64: the server reads no path; send the "
                                 f"file's bytes as base64 or a data URL", param="images") from None
        raise InvalidRequest(f"images[{i}]: not valid base64", param="images") from None


def from_wire(payload: dict, call: TaskCall, stats):
    rows = sorted(payload.get("data") or [], key=lambda r: (r.get("index", 0), r.get("page", 1)))
    pages = [OcrPage(int(r.get("index", 0)), int(r.get("page", 1)), str(r.get("text") or ""),
                     float(r.get("confidence") or 0.0),
                     _boxes(r.get("boxes"), OcrBox) if call.inputs["boxes"] else None)
             for r in rows]
    return OcrResult(payload.get("model") or call.model, pages, stats)
