"""OCR on the real rapidocr model (PP-OCRv6 ONNX files from its wheel): text rendered with Pillow into PNG,
JPEG and PDF files is read back through the runtime, over HTTP (`universal/v1/ocr`), through
`RemoteRuntime` and with `%ocr` in a real shell; the limits refuse huge images and long PDFs before
anything is decoded, and nothing loads for a bad request."""

from __future__ import annotations

import base64
import io
import re
import struct
import tracemalloc
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont

from universal_kernel.client import RemoteRuntime
from universal_kernel.errors import InvalidRequest

from .conftest import TOKEN
from .magics_support import ip, run  # noqa: F401

OCR = "rapidocr"
FIRST = ["Invoice 4217", "Total due 93 EUR"]
SECOND = ["Quarterly report", "Page two"]
PDF_SCALE = 2  # pages are rendered at 144 dpi: twice their size in points (Pillow saves pixels as points)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _reads(text: str, lines: list[str]) -> bool:
    return all(_normal(line) in _normal(text) for line in lines)


def _render(lines: list[str]) -> Image.Image:
    image = Image.new("RGB", (420, 130), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=36)
    for row, line in enumerate(lines):
        draw.text((16, 14 + 56 * row), line, fill="black", font=font)
    return image


def _encoded(image: Image.Image, kind: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose valid IHDR claims width x height, with one tiny IDAT: decoding it would need the claim."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _pdf_page(width: float, height: float) -> bytes:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    document.new_page(width, height)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module", autouse=True)
def unload_ocr_afterwards(runtime):
    """The session runtime is shared: later tests count its loaded models (the two defaults)."""
    yield
    runtime.unload(OCR)


@pytest.fixture(scope="module")
def files(runtime):
    """The test images, inside the runtime's model folder (where relative paths are found)."""
    folder = runtime.config.model_folders[0] / "ocr"
    folder.mkdir(exist_ok=True)
    first, second = _render(FIRST), _render(SECOND)
    first.save(folder / "first.png")
    first.save(folder / "first.jpg", quality=95)
    first.save(folder / "one-page.pdf", "PDF")
    first.save(folder / "two-pages.pdf", "PDF", save_all=True, append_images=[second])
    return {"folder": folder, "first": first, "second": second}


def _loaded(runtime) -> set[str]:
    return {m["id"] for m in runtime.status()["models"]}


# The runtime --------------------------------------------------------------------------------------
def test_png_jpeg_pdf_pages_and_arrays_are_read_back(runtime, files):
    jpeg = (files["folder"] / "first.jpg").read_bytes()
    result = runtime.ocr(["ocr/first.png", jpeg, "ocr/two-pages.pdf", np.asarray(files["second"])], boxes=True)
    assert result.model == OCR
    assert [(p.index, p.page) for p in result.pages] == [(0, 1), (1, 1), (2, 1), (2, 2), (3, 1)]
    expected = [FIRST, FIRST, FIRST, SECOND, SECOND]
    sizes = [files["first"].size] * 2 + [(420 * PDF_SCALE, 130 * PDF_SCALE)] * 2 + [files["second"].size]
    for page, lines, (width, height) in zip(result.pages, expected, sizes):
        assert _reads(page.text, lines), page.text
        assert len(page.text.split("\n")) == len(lines)  # one line per rendered line, top to bottom
        assert 0.8 < page.confidence <= 1
        assert page.confidence == pytest.approx(np.mean([box.confidence for box in page.boxes]))
        assert [box.text for box in page.boxes] == page.text.split("\n")
        for box in page.boxes:
            assert 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
            assert 0 <= box.confidence <= 1
    assert result.stats.kind == "ocr" and result.stats.backend == "rapidocr"

    plain = runtime.ocr(files["first"])  # one PIL image; no boxes unless asked
    assert [(p.index, p.page, p.boxes) for p in plain.pages] == [(0, 1, None)]
    assert _reads(plain.pages[0].text, FIRST)


def test_an_image_without_text_reads_empty(runtime):
    page = runtime.ocr(np.full((120, 200), 255, dtype=np.uint8), boxes=True).pages[0]
    assert (page.text, page.confidence, page.boxes) == ("", 0.0, [])


def test_bad_inputs_are_refused_before_anything_loads(runtime, files, tmp_path):
    runtime.unload(OCR)
    png = (files["folder"] / "first.png").read_bytes()

    with pytest.raises(InvalidRequest, match=r"images\[1\]: no file"):  # paths outside: tests/test_ocr_paths.py
        runtime.ocr([png, str(tmp_path / "missing.png")])
    with pytest.raises(InvalidRequest, match=r"images\[1\]: not a PNG, JPEG or PDF") as info:
        runtime.ocr([png, b"GIF89a..."])
    assert info.value.param == "images"
    with pytest.raises(InvalidRequest, match=r"images\[2\]: a broken PNG"):
        runtime.ocr([png, png, png[: len(png) // 2]])  # the header is whole, the pixels are cut
    with pytest.raises(InvalidRequest, match=r"images\[0\]: a broken PDF"):
        runtime.ocr(b"%PDF-1.4 nothing else")
    with pytest.raises(InvalidRequest, match=r"images\[0\].*uint8"):
        runtime.ocr(np.zeros((10, 10, 3), dtype=np.float32))

    # 100000 x 100000 claimed: refused from the header, without allocating the pixels
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest, match=r"images\[0\].*ocr_max_pixels"):
            runtime.ocr(_png_header_only(100_000, 100_000))
        with pytest.raises(InvalidRequest, match=r"images\[0\].*ocr_max_pixels"):
            runtime.ocr(_png_header_only(8_000, 6_000))  # under PIL's own guard, over ours (40 M)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000 * 6_000 * 3 // 4  # far below the smaller image's decoded pixels: never decoded

    limits = runtime.config.ocr_max_pages, runtime.config.ocr_max_pixels
    try:
        runtime.config.ocr_max_pages = 1
        with pytest.raises(InvalidRequest, match=r"images\[1\]: the PDF has 2 pages; the limit is 1"):
            runtime.ocr(["ocr/one-page.pdf", "ocr/two-pages.pdf"])
        runtime.config.ocr_max_pages, runtime.config.ocr_max_pixels = 50, 420 * 130 * 3
        with pytest.raises(InvalidRequest, match=r"images\[0\] page 1 .*ocr_max_pixels"):
            runtime.ocr("ocr/one-page.pdf")  # 840 x 260 once rendered
    finally:
        runtime.config.ocr_max_pages, runtime.config.ocr_max_pixels = limits
    assert OCR not in _loaded(runtime)


# HTTP and the client runtime ----------------------------------------------------------------------
def test_http_shape_pages_and_boxes(server, runtime, files):
    png = (files["folder"] / "first.png").read_bytes()
    pdf = (files["folder"] / "two-pages.pdf").read_bytes()
    body = server.post("universal/v1/ocr", {"images": [base64.b64encode(png).decode(),
                                                       "data:application/pdf;base64," + base64.b64encode(pdf).decode()],
                                            "return_boxes": True})
    assert body.status_code == 200, body.text
    body = body.json()
    assert body["object"] == "list" and body["model"] == OCR and body["id"]
    assert [(row["index"], row["page"]) for row in body["data"]] == [(0, 1), (1, 1), (1, 2)]
    local = runtime.ocr([png, pdf])
    for row, near, lines in zip(body["data"], local.pages, [FIRST, FIRST, SECOND]):
        assert set(row) == {"index", "page", "text", "confidence", "boxes"}
        assert row["text"] == near.text and _reads(row["text"], lines)
        assert row["confidence"] == pytest.approx(near.confidence, abs=1e-4)
        assert [box["text"] for box in row["boxes"]] == row["text"].split("\n")
        assert set(row["boxes"][0]) == {"x1", "y1", "x2", "y2", "text", "confidence"}

    plain = server.post("universal/v1/ocr", {"model": OCR, "images": [base64.b64encode(png).decode()]}).json()
    assert "boxes" not in plain["data"][0] and plain["data"][0]["text"] == local.pages[0].text


@pytest.mark.parametrize("images, status, message", [
    (["aGVsbG8=", "not base64!"], 400, r"images\[1\]: not valid base64"),
    (["aGVsbG8="], 400, r"images\[0\]: not a PNG, JPEG or PDF"),
    ([base64.b64encode(_png_header_only(100_000, 100_000)).decode()], 400, r"images\[0\].*ocr_max_pixels"),
    ([], 400, "images must not be empty"),
])
def test_http_errors_name_the_input(server, images, status, message):
    response = server.post("universal/v1/ocr", {"images": images})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "images" and re.search(message, error["message"]), error


def test_http_body_over_the_limit_is_413(server):
    big = base64.b64encode(b"\0" * (2 * 2**20)).decode()  # the session server takes 1 MiB (conftest.BODY_LIMIT)
    assert server.post("universal/v1/ocr", {"images": [big]}).status_code == 413


def test_remote_runtime_reads_what_the_local_runtime_reads(server, runtime, files):
    remote = RemoteRuntime(server.url, TOKEN, timeout=120)
    jpeg = (files["folder"] / "first.jpg").read_bytes()
    inputs = [jpeg, files["second"]]  # file bytes travel as they are, a PIL image as a PNG
    far, near = remote.ocr(inputs, boxes=True), runtime.ocr(inputs, boxes=True)
    assert far.model == near.model == OCR
    assert [(p.index, p.page, p.text) for p in far.pages] == [(p.index, p.page, p.text) for p in near.pages]
    for a, b in zip(far.pages, near.pages):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
        assert [(x.x1, x.y1, x.x2, x.y2) for x in a.boxes] == [(x.x1, x.y1, x.x2, x.y2) for x in b.boxes]
    # a page of 5000 x 5000 points: the client takes it (it has no limits), the server refuses it without
    # rendering it (100 M pixels at 144 dpi), and the typed error survives the trip
    with pytest.raises(InvalidRequest, match=r"images\[1\] page 1 .*ocr_max_pixels"):
        remote.ocr([jpeg, _pdf_page(5000, 5000)])
    server.post("universal/api/unload", {"model": OCR})


# %ocr ---------------------------------------------------------------------------------------------
def _ran(shell, code: str):
    captured, result = run(shell, code)
    assert result.success, result.error_in_exec
    return captured, result.result


def test_magic_text_series_and_boxes(ip, runtime, files):
    _, one = _ran(ip, "%ocr 'ocr/first.png'")
    assert isinstance(one, str) and _reads(one, FIRST)

    ip.user_ns["scans"] = pd.DataFrame({"path": ["ocr/two-pages.pdf", None, "ocr/first.png"]}, index=[7, 8, 9])
    captured, texts = _ran(ip, "%ocr scans.path")
    assert list(texts.index) == [7, 8, 9] and texts[8] == ""
    first_page, second_page = texts[7].split("\f")
    assert _reads(first_page, FIRST) and _reads(second_page, SECOND) and texts[9] == one
    assert "1 of 3 values are missing" in captured.stderr and OCR in captured.stdout

    _ran(ip, "%ocr scans.path --boxes --out found")
    table = ip.user_ns["found"]
    assert list(table.columns) == ["row", "page", "x1", "y1", "x2", "y2", "text", "confidence"]
    assert table["row"].tolist() == [7, 7, 7, 7, 9, 9] and table["page"].tolist() == [1, 1, 2, 2, 1, 1]
    assert _reads(" ".join(table["text"]), FIRST + SECOND)

    _ran(ip, "%ocr scans.path --column text")
    assert ip.user_ns["scans"]["text"].tolist() == texts.tolist()


def test_magic_user_mistakes_are_one_line(ip, tmp_path):
    from IPython.core.error import UsageError

    for line in ["42", f"'{tmp_path / 'x.png'}'", "b'GIF89a'"]:
        with pytest.raises(UsageError) as info:
            ip.run_line_magic("ocr", line)
        assert str(info.value) and "\n" not in str(info.value)
