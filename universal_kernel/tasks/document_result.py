"""What `rt.document(...)` returns: a `Document` of pages, each page's blocks in reading order and its
tables, with `.markdown()` (for retrieval) and `.frame()` (one row per block).

Boxes are in pixels of the page image: an image's own pixels, a PDF page rendered at 144 dpi (as OCR's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: block kinds; `caption` covers figure and table captions
KINDS = ("title", "text", "table", "figure", "caption", "header", "footer", "reference", "equation")
#: kinds left out of the Markdown: a page's running header and footer repeat on every page
_NOT_IN_MARKDOWN = frozenset({"header", "footer", "figure"})

BLOCK_COLUMNS = ["page", "order", "kind", "x1", "y1", "x2", "y2", "text", "confidence", "level"]


@dataclass
class Block:
    kind: str  # one of KINDS
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    text: str  # lines joined by spaces (a table's: its cells, row by row)
    order: int  # reading order on its page, from 0
    confidence: float  # in [0, 1]: how sure the kind is, times how sure the text is
    page: int  # from 1
    level: int = 0  # a title's heading level (1 = the largest type on the document), 0 otherwise
    size: float = 0.0  # its median type size, in pixels (0 for a table or figure)
    table: int | None = None  # a table block's position in its page's `tables`


@dataclass
class Table:
    page: int
    bbox: tuple[float, float, float, float]
    rows: list[list[str]]  # the header row first
    confidence: float = 1.0

    def frame(self):
        """A DataFrame: the first row names the columns (an empty or repeated name gets its position)."""
        import pandas as pd

        header, *body = self.rows or [[]]
        names, seen = [], set()
        for i, name in enumerate(header):
            name = name.strip() or f"column_{i}"
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            names.append(name)
        return pd.DataFrame(body, columns=names)

    def markdown(self) -> str:
        if not self.rows:
            return ""
        width = max(len(row) for row in self.rows)
        cells = [[_cell(c) for c in row] + [""] * (width - len(row)) for row in self.rows]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
        lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
        return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


@dataclass
class Page:
    number: int  # from 1
    width: int  # pixels of the page image
    height: int
    source: str  # "text layer" (a PDF's own text), or the kind of the model that read the page image
    blocks: list[Block] = field(default_factory=list)  # in reading order
    tables: list[Table] = field(default_factory=list)


@dataclass
class Document:
    index: int  # the input's position
    pages: list[Page]

    @property
    def blocks(self) -> list[Block]:
        return [block for page in self.pages for block in page.blocks]

    @property
    def tables_found(self) -> list[Table]:
        return [table for page in self.pages for table in page.tables]

    @property
    def tables(self) -> list:
        """Every table as a pandas DataFrame, in reading order."""
        return [table.frame() for table in self.tables_found]

    def markdown(self) -> str:
        parts = []
        for page in self.pages:
            for block in page.blocks:
                if block.kind in _NOT_IN_MARKDOWN or not block.text and block.kind != "table":
                    continue
                if block.kind == "title":
                    parts.append("#" * max(block.level, 1) + " " + block.text)
                elif block.kind == "table" and block.table is not None:
                    parts.append(page.tables[block.table].markdown())
                elif block.kind == "caption":
                    parts.append(f"*{block.text}*")
                else:
                    parts.append(block.text)
        return "\n\n".join(parts) + ("\n" if parts else "")

    def frame(self):
        """One row per block: page, order, kind, x1, y1, x2, y2, text, confidence, level."""
        import pandas as pd

        rows = [(b.page, b.order, b.kind, *b.bbox, b.text, b.confidence, b.level) for b in self.blocks]
        return pd.DataFrame.from_records(rows, columns=BLOCK_COLUMNS).astype(
            {"page": "int64", "order": "int64", "x1": "float64", "y1": "float64", "x2": "float64",
             "y2": "float64", "confidence": "float64", "level": "int64"})

    def __repr__(self) -> str:
        return (f"Document(index={self.index}, pages={len(self.pages)}, blocks={len(self.blocks)}, "
                f"tables={len(self.tables_found)})")

    def _repr_markdown_(self) -> str:
        return self.markdown()


@dataclass
class DocumentResult:
    model: str
    documents: list[Document]  # one per input, in input order
    stats: object = None
