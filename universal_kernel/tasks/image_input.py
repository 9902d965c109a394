"""Images and PDFs as a task's input: read and checked once, the same way for every task that takes them.

An input is a path, the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array. Each is checked
before a model loads: its format, and its size against the limits (pixels per image or rendered page,
pages per PDF) from its header, before anything is decoded, so that a huge image or a PDF bomb is
refused without taking the memory it claims. Images are then decoded (a broken file is refused here
too); a PDF's pages are rendered one at a time by the model's worker, each just before it is read.

Over HTTP only file bytes travel (`to_base64` on the client, `decode_base64` on the server): a server
reads no path.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import InvalidRequest, RuntimeFailure

#: PDF pages are rendered at 144 dpi (PDF points are 1/72 inch): small print stays readable
PDF_RENDER_SCALE = 2.0

_PNG, _JPEG, _PDF = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"%PDF-"
_NOT_SUPPORTED = "not a PNG, JPEG or PDF"


@dataclass(frozen=True)
class ImageLimits:
    """The most pixels per image (or rendered PDF page) and pages per PDF; None: no limit of ours.
    The settings' names go into the refusals, so that a user knows what to raise."""

    max_pixels: int | None = None
    max_pages: int | None = None
    pixels_setting: str | None = None
    pages_setting: str | None = None

    def check_pixels(self, width: float, height: float, what: str, param: str) -> None:
        pixels = int(width) * int(height)
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise InvalidRequest(f"{what} has {int(width)}x{int(height)} = {pixels:,} pixels; the limit is "
                                 f"{self.max_pixels:,} pixels per image{_named(self.pixels_setting)}", param=param)

    def check_pages(self, count: int, what: str, param: str) -> None:
        if self.max_pages is not None and count > self.max_pages:
            raise InvalidRequest(f"{what}: the PDF has {count} pages; the limit is {self.max_pages} pages per "
                                 f"PDF{_named(self.pages_setting)}", param=param)


def _named(setting: str | None) -> str:
    return f" ({setting})" if setting else ""


@dataclass
class ImageInput:
    """One image, decoded: RGB uint8, HxWx3. `data` is its file (PNG or JPEG) when it came as one."""

    array: np.ndarray
    data: bytes | None = None

    page_count = 1

    def pages(self) -> Iterator[tuple[np.ndarray, None]]:
        yield self.array, None


@dataclass
class PdfInput:
    """A PDF whose page count and page sizes are checked; its pages are rendered when read."""

    data: bytes
    page_count: int
    position: int  # the input's position, for the errors of a page that fails to render
    param: str = "images"

    def pages(self):
        """(page image, the open pypdfium2 page, for its text layer) for each page, rendered as it is reached."""
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(self.data)
        try:
            for number in range(self.page_count):
                page = document[number]
                try:
                    bitmap = page.render(scale=PDF_RENDER_SCALE)
                    image = np.array(bitmap.to_pil().convert("RGB"))  # a copy: the bitmap is freed below
                    bitmap.close()
                    yield image, page
                except pdfium.PdfiumError as exc:
                    raise InvalidRequest(f"{self.param}[{self.position}]: page {number + 1} cannot be rendered: "
                                         f"{exc}", param=self.param) from None
                finally:
                    page.close()
        finally:
            document.close()


def read_inputs(images, limits: ImageLimits, path_check: Callable | None = None,
                param: str = "images") -> list[ImageInput | PdfInput]:
    """Read and check every input; nothing loads for a bad one. `path_check(path, param)` finds a path's
    file or refuses it (None: paths are not taken)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]  # one path, file, image or array
    if not items:
        raise InvalidRequest(f"{param} must not be empty", param=param)
    return [_read_input(item, i, limits, path_check, param) for i, item in enumerate(items)]


def _read_input(item, i: int, limits: ImageLimits, path_check, param: str):
    name = f"{param}[{i}]"
    if isinstance(item, (str, os.PathLike)):
        if path_check is None:
            raise InvalidRequest(f"{name}: paths are not taken here; send the file's bytes", param=param)
        try:
            path = path_check(item, param)
        except RuntimeFailure as exc:  # which input it was, as for every other refusal
            raise type(exc)(f"{name}: {exc.message}", param=param) from None
        try:
            item = path.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"{name}: cannot read {str(path)!r}: {exc.strerror or exc}", param=param) from None
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _read_file(bytes(item), i, limits, param)
    if isinstance(item, np.ndarray):
        return ImageInput(_rgb_array(item, name, limits, param))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with the image dependencies
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        limits.check_pixels(*item.size, name, param)
        return ImageInput(np.array(item.convert("RGB")))
    raise InvalidRequest(f"{name}: a path, the bytes of a PNG, JPEG or PDF, a PIL image or a numpy array, "
                         f"not {type(item).__name__}", param=param)


def _rgb_array(array: np.ndarray, name: str, limits: ImageLimits, param: str) -> np.ndarray:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InvalidRequest(f"{name}: an image array is HxW or HxWx3/4 uint8, not {array.dtype} "
                             f"{'x'.join(map(str, array.shape))}", param=param)
    limits.check_pixels(array.shape[1], array.shape[0], name, param)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])  # alpha dropped: text is read from the colours


def _read_file(data: bytes, i: int, limits: ImageLimits, param: str):
    name = f"{param}[{i}]"
    if data.startswith(_PDF):
        return _read_pdf(data, i, limits, param)
    if not (data.startswith(_PNG) or data.startswith(_JPEG)):
        raise InvalidRequest(f"{name}: {_NOT_SUPPORTED}", param=param)
    from PIL import Image, ImageOps

    try:
        # the header only: the size is known, nothing is decoded yet
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        # PIL's own guard (Image.MAX_IMAGE_PIXELS) refuses an image over twice its limit from the header
        limit = f"the limit is {limits.max_pixels:,} pixels per image{_named(limits.pixels_setting)}" \
            if limits.max_pixels else "too large to decode safely"
        raise InvalidRequest(f"{name}: {limit}: {exc}", param=param) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... on broken headers
        raise InvalidRequest(f"{name}: a broken {_kind(data)} file: {exc}", param=param) from None
    limits.check_pixels(*image.size, name, param)
    try:
        image.load()
        # a photo's EXIF orientation, as a viewer shows it (boxes are in the turned image's pixels)
        array = np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt body
        raise InvalidRequest(f"{name}: a broken {_kind(data)} file: {exc}", param=param) from None
    return ImageInput(array, data)


def _kind(data: bytes) -> str:
    return "PNG" if data.startswith(_PNG) else "JPEG"


def _read_pdf(data: bytes, i: int, limits: ImageLimits, param: str) -> PdfInput:
    import pypdfium2 as pdfium

    name = f"{param}[{i}]"
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise InvalidRequest(f"{name}: a broken PDF file: {exc}", param=param) from None
    try:
        count = len(document)
        limits.check_pages(count, name, param)
        if count == 0:
            raise InvalidRequest(f"{name}: the PDF has no pages", param=param)
        for number in range(count):
            # the size in points, from the page's dictionary: nothing is rendered yet
            width, height = document.get_page_size(number)
            limits.check_pixels(round(width * PDF_RENDER_SCALE), round(height * PDF_RENDER_SCALE),
                                f"{name} page {number + 1} (rendered at {72 * PDF_RENDER_SCALE:.0f} dpi)", param)
    except pdfium.PdfiumError as exc:
        raise InvalidRequest(f"{name}: a broken PDF file: {exc}", param=param) from None
    finally:
        document.close()
    return PdfInput(data, count, i, param)


# Over HTTP: file bytes as base64 -------------------------------------------------------------------
def to_base64(source: ImageInput | PdfInput) -> str:
    """An input as the client sends it: its file as it came; a PIL image or an array as a PNG, lossless."""
    data = source.data
    if data is None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(source.array).save(buffer, "PNG")
        data = buffer.getvalue()
    return base64.b64encode(data).decode("ascii")


def decode_base64(value: str, i: int, param: str = "images") -> bytes:
    """A base64 string or a data URL (`data:image/png;base64,...`) as the file's bytes (the server's side)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{param}[{i}]: a base64 string or a data URL", param=param)
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise InvalidRequest(f"{param}[{i}]: a data URL must be base64 (data:image/png;base64,...)", param=param)
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        if any(mark in text for mark in ".~\\"):  # never in base64, common in a path
            raise InvalidRequest(f"{param}[{i}]: {text[:200]!r} is not base64: the server reads no path; send the "
                                 f"file's bytes as base64 or a data URL", param=param) from None
        raise InvalidRequest(f"{param}[{i}]: not valid base64", param=param) from None


def decode_all(values: list[str], param: str = "images") -> list[bytes]:
    return [decode_base64(value, i, param) for i, value in enumerate(values)]
