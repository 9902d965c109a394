"""Documents: each page's blocks (title, text, table, caption, ...) in reading order, its tables as
rows of cells, and the whole as Markdown.

The inputs are paths, bytes of PNG/JPEG/PDF, PIL images or arrays, read and checked by the shared image
input (tasks/image_input.py) before anything loads, under the limits of the task whose model reads the
pages (`page_reader`). The model's worker reads each page's text from the PDF's own text layer where the
page has one, else from the page image with the model; the layout model (rapid-layout,
backends/rapid_layout_engine.py) goes with it. Pages are rendered one at a time, each just before it is read.
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

from ..errors import Cancelled
from . import TaskCall, task_parts
from .document_result import Document, DocumentResult, Page
from .image_input import PDF_RENDER_SCALE, read_inputs

PATH = "v1/documents"
#: `Page.source` of a page whose text came from the PDF's own text layer
TEXT_LAYER = "text layer"


def page_reader() -> ModuleType:
    """The runtime part of the task of the model kind that reads the pages (this task's registry line names
    that one kind): the limits on its images and PDFs are this task's too."""
    (kind,) = {kind for _, kind in task_parts("document").models}
    return task_parts(kind).runtime_part()


def limits(config) -> dict:
    """The limits of a RuntimeConfig, as `call`'s keywords: the page reader's (its settings)."""
    return page_reader().limits(config)


def document(runtime, source, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None):
    """A `Document` (pages -> blocks, tables, `.markdown()`, `.frame()`) for one path, file's bytes, PIL image
    or PDF; a list of them for a list. Inputs are read and checked as the page reader's are (`page_reader`)."""
    checked = call(source, model, backend=backend, keep_alive=keep_alive,
                   **page_reader().read_options(runtime.file_access("document")))
    return documents_of(runtime.run(checked), source)


def call(sources, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
         max_pixels: int | None = None, max_pages: int | None = None, path_check: Callable | None = None) -> TaskCall:
    """Read and check every input; nothing loads for a bad one. `path_check(path, param)` finds a path's
    file or refuses it (None: paths are not taken); `max_pixels`/`max_pages` None: no limit of ours."""
    inputs = read_inputs(sources, page_reader().image_limits(max_pixels, max_pages), path_check)
    return TaskCall("document", model, {"images": inputs}, backend, keep_alive)


def read_page(instance, layout, number: int, image, pdf_page, reader: str) -> Page:
    """One page: its words (the text layer, else the text reader `instance`, a model of kind `reader`), the
    layout's regions, then blocks and tables."""
    from .document_layout import build_page
    from .document_text import line_words, text_layer_words

    words = text_layer_words(pdf_page, PDF_RENDER_SCALE) if pdf_page is not None else []
    source = TEXT_LAYER
    if not words:  # a scanned page, or an image
        # a document's pages are upright: the line-orientation classifier would only turn long lines over
        words = line_words(instance.read_images([image], boxes=True, turned_lines=False)[0])
        source = reader
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
            for number, (image, pdf_page) in enumerate(source.pages(), start=1):
                if cancelled():
                    raise Cancelled("the document request was cancelled")
                pages.append(read_page(instance, layout, number, image, pdf_page, ctx.spec.task))
            document = Document(index, pages)
            set_levels(document)
            documents.append(document)
        return DocumentResult(ctx.spec.id, documents, ctx.stats)

    return run


def documents_of(result: DocumentResult, source):
    """`rt.document`'s answer: one Document for one source, a list for a list."""
    return result.documents if isinstance(source, (list, tuple)) else result.documents[0]


# The wire (the HTTP client runtime; the schema is document_wire.py) --------------------------------
def to_wire(call: TaskCall) -> dict:
    from .document_wire import DocumentRequest
    from .image_input import to_base64

    return DocumentRequest.of(call, images=[to_base64(source) for source in call.inputs["images"]]).body()


def from_wire(payload: dict, call: TaskCall, stats) -> DocumentResult:
    from .document_wire import DocumentResponse
    from .wire_base import read_response

    response = read_response(DocumentResponse, payload, call.task)
    rows = sorted(response.data, key=lambda row: row.index)
    return DocumentResult(response.model, [document_from_wire(row) for row in rows], stats)


def document_to_wire(document: Document):
    """A Document as its wire row (`DocumentRow`; the server's side)."""
    from .document_wire import BlockOut, DocumentRow, TableOut

    blocks = [BlockOut(kind=b.kind, bbox=list(b.bbox), text=b.text, order=b.order, confidence=b.confidence,
                       page=b.page, level=b.level) for b in document.blocks]
    tables = [TableOut(page=t.page, bbox=list(t.bbox), rows=t.rows, confidence=t.confidence)
              for t in document.tables_found]
    return DocumentRow(index=document.index, pages=len(document.pages), blocks=blocks, tables=tables,
                       markdown=document.markdown())


def document_from_wire(row) -> Document:
    """A Document from its wire row (`DocumentRow`; the client's side: page sizes do not travel)."""
    from .document_result import Block, Table

    pages = {n: Page(n, 0, 0, "") for n in range(1, row.pages + 1)}
    for t in row.tables:
        table = Table(t.page, tuple(t.bbox), [list(r) for r in t.rows], t.confidence)
        pages.setdefault(table.page, Page(table.page, 0, 0, "")).tables.append(table)
    for b in row.blocks:
        block = Block(b.kind, tuple(b.bbox), b.text, b.order, b.confidence, b.page, b.level)
        page = pages.setdefault(block.page, Page(block.page, 0, 0, ""))
        if block.kind == "table":  # the page's tables travel in reading order, as its table blocks
            block.table = sum(1 for other in page.blocks if other.kind == "table")
        page.blocks.append(block)
    return Document(row.index, [pages[n] for n in sorted(pages)])
