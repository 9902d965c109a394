"""The document task's wire schema: `POST v1/documents`
`{model?, images: [base64 or data URL of PNG/JPEG/PDF]}` ->
`{id, object: "list", model, data: [{index, pages, blocks: [{kind, bbox, text, order, confidence, page, level}],
tables: [{page, bbox, rows: [[cell, ...], ...], confidence}], markdown}]}`, one row per input, each table's
header row first. Boxes are pixels of the page image (a PDF page rendered at 144 dpi). Only file bytes
travel: a server reads no path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from .wire_base import TaskRequest


class DocumentRequest(TaskRequest):
    images: list[str]  # base64 or data URLs (data:application/pdf;base64,...)


class BlockOut(BaseModel):
    kind: str  # title, text, table, figure, caption, header, footer, reference, equation
    bbox: list[float]  # x1, y1, x2, y2
    text: str
    order: int  # reading order on its page, from 0
    confidence: float
    page: int
    level: int  # a title's heading level, 0 for other kinds


class TableOut(BaseModel):
    page: int
    bbox: list[float]
    rows: list[list[str]]  # the header row first
    confidence: float


class DocumentRow(BaseModel):
    index: int  # the input's position in the request
    pages: int
    blocks: list[BlockOut]
    tables: list[TableOut]
    markdown: str


class DocumentResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[DocumentRow]
