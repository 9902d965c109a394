"""One page's blocks: the layout model's regions, checked against the page's own evidence.

- Tables come from ruling lines (document_tables.py); the words in them are theirs alone.
- Every other line goes to the layout region that covers most of it; a region's lines split into
  blocks where the type size changes or a gap opens. Lines no region covers group by proximity.
- A block's kind is its region's class, unless the page says otherwise: type clearly larger than the
  page's body text, on at most a few lines, is a title (the model calls a big title "text" at times);
  a short block right above or below a table or figure, no larger than the body text, is its caption
  (the model calls captions "reference" at times).
- A "reference" region the model is unsure of, without a reference marker, is text.
- Reading order: recursive XY-cut over the blocks, columns before rows, so that a two-column page
  reads down the left column first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .document_result import Block, Page, Table
from .document_tables import fill, find_grids
from .document_text import Line, Word, group_lines

#: a line this much larger than the page's body text (both medians) is title type
TITLE_RATIO = 1.25
#: a title is at most this many lines
TITLE_MAX_LINES = 3
#: a caption is at most this many lines, within this many body line heights of its table or figure
CAPTION_MAX_LINES = 2
CAPTION_GAP_LINES = 2.5
#: a line goes to the region that covers at least this share of its box
REGION_COVER = 0.5
#: the score of a kind the page's evidence decided (no region, or overruled)
EVIDENCE_SCORE = 1.0
NO_REGION_SCORE = 0.5

_LABELS = {"text": "text", "title": "title", "figure": "figure", "figure_caption": "caption",
           "table_caption": "caption", "header": "header", "footer": "footer", "reference": "reference",
           "equation": "equation", "table": "table"}
#: a "reference" region scored below this, without a reference marker, is prose
REFERENCE_SURE = 0.8
_REFERENCE_START = re.compile(r"^(\[\d+\]|\(\d+\)|\d+\.\s)")
_CAPTION_START = re.compile(r"^(table|tab\.|figure|fig\.|chart|exhibit)\s*\d", re.IGNORECASE)


@dataclass
class _Draft:
    kind: str
    lines: list[Line] = field(default_factory=list)
    score: float = NO_REGION_SCORE
    bbox: tuple | None = None  # a figure's or table's own box; else the lines'
    table: Table | None = None

    def box(self) -> tuple[float, float, float, float]:
        if self.bbox is not None:
            return self.bbox
        boxes = np.array([line.bbox for line in self.lines])
        return (float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max()))

    @property
    def size(self) -> float:
        return float(np.median([line.size for line in self.lines])) if self.lines else 0.0


def build_page(number: int, image: np.ndarray, words: list[Word], regions: list, source: str) -> Page:
    height, width = image.shape[:2]
    drafts: list[_Draft] = []
    tables: list[Table] = []
    remaining = list(words)
    for grid in find_grids(image):
        rows, taken = fill(grid, remaining)
        if not any(cell for row in rows for cell in row):
            continue  # a ruled box with nothing in it: a frame, not a table
        taken_ids = {id(w) for w in taken}
        remaining = [w for w in remaining if id(w) not in taken_ids]
        confidence = float(np.mean([w.confidence for w in taken])) if taken else 0.0
        table = Table(number, grid.bbox, rows, confidence)
        tables.append(table)
        drafts.append(_Draft("table", score=confidence, bbox=grid.bbox, table=table))

    lines = group_lines(remaining)
    text_regions = [r for r in regions if _LABELS.get(r.label) not in ("table", "figure")]
    for region in regions:
        if region.label == "figure" and not any(_cover(line.bbox, region.bbox) >= REGION_COVER for line in lines):
            drafts.append(_Draft("figure", score=region.score, bbox=region.bbox))
    by_region: dict[int, list[Line]] = {}
    loose: list[Line] = []
    for line in lines:
        covers = [_cover(line.bbox, r.bbox) for r in text_regions]
        best = int(np.argmax(covers)) if covers else -1
        if best >= 0 and covers[best] >= REGION_COVER:
            by_region.setdefault(best, []).append(line)
        else:
            loose.append(line)
    for i, region_lines in by_region.items():
        region = text_regions[i]
        for group in _split(region_lines):
            drafts.append(_Draft(_LABELS.get(region.label, "text"), group, region.score))
    for group in _proximity_groups(loose):
        drafts.append(_Draft("text", group, NO_REGION_SCORE))

    drafts = _join_split_paragraphs(drafts)
    body = _body_size(drafts)
    for draft in drafts:
        _decide_kind(draft, drafts, body)
    ordered = _xy_cut(drafts)
    blocks = []
    table_order = [d.table for d in ordered if d.table is not None]
    for order, draft in enumerate(ordered):
        if draft.table is not None:
            text = "\n".join(" | ".join(row) for row in draft.table.rows)
            confidence = draft.score
        else:
            text = " ".join(line.text for line in draft.lines)
            confidence = draft.score * (float(np.mean([l.confidence for l in draft.lines])) if draft.lines else 1.0)
        block = Block(draft.kind, tuple(round(v, 1) for v in draft.box()), text, order,
                      round(min(max(confidence, 0.0), 1.0), 4), number, size=round(draft.size, 2))
        if draft.table is not None:
            block.table = next(i for i, t in enumerate(table_order) if t is draft.table)
        blocks.append(block)
    return Page(number, int(width), int(height), source, blocks, table_order)


def _cover(inner, outer) -> float:
    """The share of `inner`'s area that `outer` covers."""
    w = min(inner[2], outer[2]) - max(inner[0], outer[0])
    h = min(inner[3], outer[3]) - max(inner[1], outer[1])
    area = max((inner[2] - inner[0]) * (inner[3] - inner[1]), 1e-6)
    return max(w, 0) * max(h, 0) / area


def _split(lines: list[Line]) -> list[list[Line]]:
    """A region's lines, top to bottom, cut where the type size changes or a gap wider than a line opens."""
    groups: list[list[Line]] = []
    for line in sorted(lines, key=lambda l: (l.bbox[1], l.bbox[0])):
        if groups:
            last = groups[-1][-1]
            gap = line.bbox[1] - last.bbox[3]
            ratio = max(line.size, last.size) / max(min(line.size, last.size), 1e-6)
            if ratio < 1.15 and gap <= 1.0 * max(line.height, last.height):
                groups[-1].append(line)
                continue
        groups.append([line])
    return groups


def _proximity_groups(lines: list[Line]) -> list[list[Line]]:
    """Lines no region covers: a line joins the group whose last line is right above it, overlapping it
    across, of the same type size."""
    groups: list[list[Line]] = []
    for line in sorted(lines, key=lambda l: (l.bbox[1], l.bbox[0])):
        for group in groups:
            last = group[-1]
            gap = line.bbox[1] - last.bbox[3]
            across = min(line.bbox[2], last.bbox[2]) - max(line.bbox[0], last.bbox[0])
            ratio = max(line.size, last.size) / max(min(line.size, last.size), 1e-6)
            if -0.3 * line.height <= gap <= 1.0 * max(line.height, last.height) and across > 0 and ratio < 1.15:
                group.append(line)
                break
        else:
            groups.append([line])
    return groups


def _join_split_paragraphs(drafts: list[_Draft]) -> list[_Draft]:
    """One paragraph the model cut into two regions ("reference" over "text", say) is one block again: a
    text block right under another (within a line's height), in the same column, of the same type size,
    with the lower score of the two."""
    kept: list[_Draft] = []
    for draft in sorted(drafts, key=lambda d: d.box()[1]):
        above = next((k for k in reversed(kept) if _continues(k, draft)), None) if draft.kind in _BODY else None
        if above is None:
            kept.append(draft)
            continue
        # a paragraph partly called "reference" is text (references are lists of entries, not split prose)
        if draft.kind != above.kind:
            above.kind = "text"
        above.lines.extend(draft.lines)
        above.score = min(above.score, draft.score)
    return kept


_BODY = ("text", "reference")


def _continues(above: _Draft, below: _Draft) -> bool:
    if above.kind not in _BODY or not above.lines or not below.lines:
        return False
    a, b = above.lines[-1], below.lines[0]
    gap = b.bbox[1] - a.bbox[3]
    width = min(above.box()[2] - above.box()[0], below.box()[2] - below.box()[0])
    across = min(above.box()[2], below.box()[2]) - max(above.box()[0], below.box()[0])
    ratio = max(a.size, b.size) / max(min(a.size, b.size), 1e-6)
    return -0.3 * b.height <= gap <= 1.0 * max(a.height, b.height) and across >= 0.5 * width and ratio < 1.15


def _body_size(drafts: list[_Draft]) -> float:
    """The page's body type size: the median over its characters, outside tables."""
    sizes, weights = [], []
    for draft in drafts:
        for line in draft.lines:
            sizes.append(line.size)
            weights.append(len(line.text))
    if not sizes:
        return 0.0
    order = np.argsort(sizes)
    cumulative = np.cumsum(np.array(weights)[order])
    return float(np.array(sizes)[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _decide_kind(draft: _Draft, drafts: list[_Draft], body: float) -> None:
    if draft.kind in ("table", "figure") or not draft.lines or body <= 0:
        return
    text = " ".join(line.text for line in draft.lines)
    # the model calls body prose "reference" at times, with a middling score: a reference list's entry
    # starts with its marker ([3], 3., (3)); prose the model is unsure of is text
    if draft.kind == "reference" and draft.score < REFERENCE_SURE and not _REFERENCE_START.match(text):
        if not _next_to_table_or_figure(draft, drafts, body):  # a caption, decided below
            draft.kind = "text"
    larger = draft.size >= TITLE_RATIO * body
    # a running header is small type: one in large type is the page's title
    if larger and len(draft.lines) <= TITLE_MAX_LINES and draft.kind in ("text", "reference", "caption", "title",
                                                                        "header"):
        if draft.kind != "title":
            draft.kind, draft.score = "title", EVIDENCE_SCORE
        return
    if draft.kind in ("text", "reference") and len(draft.lines) <= CAPTION_MAX_LINES and draft.size <= 1.05 * body:
        if draft.kind == "reference" or _CAPTION_START.match(text):
            if _next_to_table_or_figure(draft, drafts, body):
                # "Table 1: ..." beside a table is the page's own word for it; else the model's score stands
                draft.kind = "caption"
                if _CAPTION_START.match(text):
                    draft.score = EVIDENCE_SCORE


def _next_to_table_or_figure(draft: _Draft, drafts: list[_Draft], body: float) -> bool:
    x1, y1, x2, y2 = draft.box()
    for other in drafts:
        if other.kind not in ("table", "figure"):
            continue
        ox1, oy1, ox2, oy2 = other.box()
        across = min(x2, ox2) - max(x1, ox1)
        gap = max(y1 - oy2, oy1 - y2)  # below it, or above it
        if across > 0 and gap <= CAPTION_GAP_LINES * body * 1.2:
            return True
    return False


def _xy_cut(drafts: list[_Draft]) -> list[_Draft]:
    if len(drafts) <= 1:
        return list(drafts)
    for axis in (0, 1):  # columns (cut along x) first, then rows
        groups = _cut(drafts, axis)
        if len(groups) > 1:
            return [d for group in groups for d in _xy_cut(group)]
    return sorted(drafts, key=lambda d: (d.box()[1], d.box()[0]))


def _cut(drafts: list[_Draft], axis: int) -> list[list[_Draft]]:
    """Groups separated by an empty band across the page along `axis` (0: x, 1: y)."""
    ordered = sorted(drafts, key=lambda d: d.box()[axis])
    groups, reach = [[ordered[0]]], ordered[0].box()[axis + 2]
    for draft in ordered[1:]:
        box = draft.box()
        if box[axis] > reach:
            groups.append([draft])
        else:
            groups[-1].append(draft)
        reach = max(reach, box[axis + 2])
    return groups
