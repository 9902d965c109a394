"""Documents (`rt.document`) on generated pages: how well, and how fast against what they are built on.

P born-digital A4 pages written with fpdf2 (seeded: a title of 18-26 pt, 1-3 paragraphs of 11 pt, a ruled
table of 2-5 columns and 3-7 rows of words and numbers, a caption "Table N: ..." under it), parsed:
- from their text layer (`rt.document(pdf)`);
- as scans: each page rendered at 216 dpi to an image (`rt.document(image)`, OCR by rapidocr).
Measured on both: table cell accuracy (cells equal to what was drawn, whitespace aside: on the OCR side,
case and punctuation aside too), title detection (the first block is a title holding the drawn title)
caption detection and paragraphs (the text blocks are the drawn paragraphs, in order), against rapid-layout alone (its regions: is the title's line in a "title" region,
the caption's in a caption region?). Speed: pages/s of `rt.document` on the scans against the raw
pipeline (rapid-layout's RapidLayout + rapidocr's RapidOCR, constructed as the runtime constructs them,
called directly on the same images), and on the PDFs against pdfplumber's text extraction when it is
installed.

    python bench/documents.py            # 6 pages, 1 run per side
    python bench/documents.py --smoke    # 1 page
"""

from __future__ import annotations

import random
import re
import time

import numpy as np

from _common import _WORDS, Row, parser, print_cpu, print_table, threads

SCAN_SCALE = 3.0
WORDS = list(_WORDS)


def make_page(rng: random.Random):
    """(PDF bytes, what was drawn: title, paragraphs, table rows, caption)."""
    from fpdf import FPDF

    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))).title()
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 45))).capitalize() + "."
                  for _ in range(rng.randint(1, 3))]
    columns = rng.randint(2, 5)
    rows = [[rng.choice(WORDS).title() for _ in range(columns)]]
    for _ in range(rng.randint(2, 6)):
        rows.append([rng.choice(WORDS) if c == 0 else str(rng.randint(0, 99999)) for c in range(columns)])
    caption = f"Table {rng.randint(1, 9)}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6)))
    pdf = FPDF(format="A4")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", rng.randint(18, 26))
    pdf.multi_cell(0, 12, title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font("Helvetica", "", 11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(5)
    pdf.ln(4)
    with pdf.table(width=min(190, 38 * columns), align="LEFT", first_row_as_headings=False, borders_layout="ALL",
                   line_height=8) as table:
        for cells in rows:
            row = table.row()
            for cell in cells:
                row.cell(cell)
    pdf.ln(3)
    pdf.set_font("Helvetica", "I", 10)
    pdf.cell(0, 6, caption, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output()), {"title": title, "paragraphs": paragraphs, "rows": rows, "caption": caption}


def scan_of(pdf: bytes) -> np.ndarray:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        return np.array(document[0].render(scale=SCAN_SCALE).to_pil().convert("RGB"))
    finally:
        document.close()


def _norm(text: str, loose: bool) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"[^a-z0-9 ]", "", text.lower()) if loose else text


def score(document, drawn: dict, loose: bool) -> dict:
    blocks = document.pages[0].blocks
    title = bool(blocks) and blocks[0].kind == "title" and _norm(blocks[0].text, loose) == _norm(drawn["title"], loose)
    caption = any(b.kind == "caption" and _norm(b.text, loose) == _norm(drawn["caption"], loose) for b in blocks)
    expected = drawn["rows"]
    found = document.tables_found[0].rows if len(document.tables_found) == 1 else []
    cells = sum(1 for r, row in enumerate(expected) for c, cell in enumerate(row)
                if r < len(found) and c < len(found[r]) and _norm(found[r][c], loose) == _norm(cell, loose))
    paragraphs = [_norm(b.text, loose) for b in blocks if b.kind == "text"] == [_norm(p, loose)
                                                                                for p in drawn["paragraphs"]]
    return {"title": title, "caption": caption, "paragraphs": paragraphs, "cells": cells,
            "of": sum(len(row) for row in expected)}


def raw_layout_says(regions, document, drawn: dict) -> dict:
    """Does rapid-layout alone put the title's block in a title region, the caption's in a caption region?"""
    def label_of(block) -> str | None:
        x1, y1, x2, y2 = block.bbox
        best, label = 0.0, None
        for r in regions:
            w = min(x2, r.bbox[2]) - max(x1, r.bbox[0])
            h = min(y2, r.bbox[3]) - max(y1, r.bbox[1])
            cover = max(w, 0) * max(h, 0) / max((x2 - x1) * (y2 - y1), 1e-6)
            if cover > best:
                best, label = cover, r.label
        return label if best >= 0.5 else None

    blocks = document.pages[0].blocks
    title = next((b for b in blocks if _norm(b.text, True) == _norm(drawn["title"], True)), None)
    caption = next((b for b in blocks if _norm(b.text, True) == _norm(drawn["caption"], True)), None)
    return {"title": title is not None and label_of(title) == "title",
            "caption": caption is not None and label_of(caption) in ("table_caption", "figure_caption")}


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    print_cpu()
    from rapidocr import RapidOCR

    from universal_kernel import Runtime
    from universal_kernel.backends.rapid_layout_engine import LayoutEngine
    from universal_kernel.backends.rapidocr_engine import _model_file

    count = 1 if args.smoke else 6
    rng = random.Random(0)
    pages = [make_page(rng) for _ in range(count)]
    scans = [scan_of(pdf) for pdf, _ in pages]
    n = threads(args)
    rt = Runtime()
    rt.document(pages[0][0])  # loads rapidocr and the layout model: not measured

    started = time.perf_counter()
    parsed = [rt.document(pdf) for pdf, _ in pages]
    text_s = time.perf_counter() - started
    # the raw pipeline: the same two models, constructed as the runtime constructs them, called directly
    from pathlib import Path

    layout = LayoutEngine(n)
    folder = Path(rt.resolve("rapidocr").path)
    engine = RapidOCR(params={"Det.model_path": str(_model_file(folder, "*det*.onnx")),
                              "Rec.model_path": str(_model_file(folder, "*rec*.onnx")),
                              "Cls.model_path": str(_model_file(folder, "*cls*.onnx")),
                              "Global.log_level": "error", "EngineConfig.onnxruntime.intra_op_num_threads": n,
                              "EngineConfig.onnxruntime.inter_op_num_threads": 1})
    engine(np.ascontiguousarray(scans[0][..., ::-1]))  # warm-up

    def raw(image):
        regions = layout.regions(image)
        engine(np.ascontiguousarray(image[..., ::-1]))  # the engine works in BGR, as a user must know
        return regions

    # the scans, the two sides interleaved page by page (ABBA), so that a busy machine slows both alike
    scanned, raw_regions, scan_s, raw_s = [], [], 0.0, 0.0
    for i, image in enumerate(scans):
        for side in (("ours", "raw") if i % 2 == 0 else ("raw", "ours")):
            started = time.perf_counter()
            if side == "ours":
                scanned.append(rt.document(image))
                scan_s += time.perf_counter() - started
            else:
                raw_regions.append(raw(image))
                raw_s += time.perf_counter() - started

    plumber_s = None
    try:
        import io

        import pdfplumber

        started = time.perf_counter()
        for pdf, _ in pages:
            with pdfplumber.open(io.BytesIO(pdf)) as document:
                for page in document.pages:
                    page.extract_text()
        plumber_s = time.perf_counter() - started
    except ImportError:
        pass

    text_scores = [score(d, drawn, False) for d, (_, drawn) in zip(parsed, pages)]
    scan_scores = [score(d, drawn, True) for d, (_, drawn) in zip(scanned, pages)]
    # the regions were found on the scans: compared with the scans' blocks (the same pixels)
    raw = [raw_layout_says(r, d, drawn) for r, d, (_, drawn) in zip(raw_regions, scanned, pages)]

    def share(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    def cells(rows):
        return sum(r["cells"] for r in rows) / max(sum(r["of"] for r in rows), 1)

    nan = float("nan")
    table = [
        Row("table cell accuracy", "text layer", [cells(text_scores)], "scans (OCR)", [cells(scan_scores)], "share"),
        Row("title found, text layer", "rt.document", [share(text_scores, "title")], "rapid-layout alone",
            [share(raw, "title")], "share"),
        Row("title found, scans", "rt.document", [share(scan_scores, "title")], "rapid-layout alone",
            [share(raw, "title")], "share"),
        Row("caption found, text layer", "rt.document", [share(text_scores, "caption")], "rapid-layout alone",
            [share(raw, "caption")], "share"),
        Row("caption found, scans", "rt.document", [share(scan_scores, "caption")], "rapid-layout alone",
            [share(raw, "caption")], "share"),
        Row("paragraphs exact, in order", "text layer", [share(text_scores, "paragraphs")], "scans (OCR)",
            [share(scan_scores, "paragraphs")], "share"),
        Row("pages/s, scans", "rt.document", [count / scan_s], "raw rapid-layout + rapidocr", [count / raw_s],
            "pages/s", "ratio>=", 0.95),
        Row("pages/s, text-layer PDFs", "rt.document", [count / text_s], "pdfplumber extract_text",
            [count / plumber_s if plumber_s else nan], "pages/s"),
    ]
    print_table(f"documents: {count} generated pages, {n} threads", table,
                notes=["pdfplumber: not installed" if plumber_s is None else "",
                       "the raw pipeline places nothing: no blocks, tables or reading order"])
    rt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
