"""`%ocr` over rows: its row function and its results, for the row executor (universal_kernel/row_executor.py).

Each row is an image or PDF (a path, bytes, a PIL image, an array); its output is its pages. Two results:
the text of each row (a PDF's pages joined by a form feed; empty for a missing row) on the input's index,
or with boxes the long table `row, page, x1, y1, x2, y2, text, confidence` of the lines read.
"""

from __future__ import annotations

from ..row_executor import Chunk, Rows, RowTask

BOX_COLUMNS = ["row", "page", "x1", "y1", "x2", "y2", "text", "confidence"]
PAGE_BREAK = "\f"

#: images per runtime call: an image takes about a second, so small chunks keep the progress bar moving
OCR_CHUNK_ROWS = 4

_TAKES = "a path, bytes, a PIL image, a numpy array, or a list or Series of them"


def pages_chunk(runtime, images: list, model: str | None = None, boxes: bool = False) -> Chunk:
    result = runtime.ocr(images, model, boxes=boxes)
    pages: list[list] = [[] for _ in images]
    for page in result.pages:
        pages[page.index].append(page)
    return Chunk(pages, result.model)


def _texts(rows: Rows) -> list[str]:
    return [PAGE_BREAK.join(page.text for page in pages or []) for pages in rows.outputs]


def text_series(rows: Rows):
    import pandas as pd

    return pd.Series(_texts(rows), index=rows.index, name=rows.name, dtype=object)


def one_text(rows: Rows):
    """One image gives its text, a collection a Series of texts."""
    return _texts(rows)[0] if rows.one else text_series(rows)


def box_table(rows: Rows):
    import pandas as pd

    records = [(row, page.page, box.x1, box.y1, box.x2, box.y2, box.text, box.confidence)
               for row, pages in zip(rows.index, rows.outputs) for page in pages or [] for box in page.boxes or []]
    table = pd.DataFrame.from_records(records, columns=BOX_COLUMNS)
    # typed even when nothing was read, so that `table.x1` is always numeric
    return table.astype({"page": "int64", "x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64",
                         "confidence": "float64"})


def box_meta(rows: Rows):
    """The empty table Dask announces: `row` has the input index's type."""
    import pandas as pd

    return pd.DataFrame({"row": pd.Series([], dtype=rows.index.dtype), "page": pd.Series([], dtype="int64"),
                         **{c: pd.Series([], dtype="float64") for c in ("x1", "y1", "x2", "y2")},
                         "text": pd.Series([], dtype=object),
                         "confidence": pd.Series([], dtype="float64")})[BOX_COLUMNS]


def box_dicts(rows: Rows) -> dict:
    return {"": [[{name: getattr(box, name) for name in BOX_COLUMNS[2:]} | {"page": page.page}
                  for page in pages or [] for box in page.boxes or []] for pages in rows.outputs]}


_COMMON = dict(task="ocr", run=pages_chunk, reads="values", dedupe=False, chunk_rows=OCR_CHUNK_ROWS,
               missing="their text is empty", takes=_TAKES, example_column="path")
TEXT_ROWS = RowTask("%ocr", table=text_series, local_result=one_text, **_COMMON)
BOX_ROWS = RowTask("%ocr", table=box_table, meta=box_meta, columns=box_dicts, aligned=False, **_COMMON)
