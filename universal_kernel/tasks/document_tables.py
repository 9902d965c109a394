"""Ruled tables: their grid from the page image's ruling lines (OpenCV), their cells' text from the
words that lie in each cell.

Long thin horizontal and vertical strokes are kept by morphological opening (text strokes are far
shorter than a rule); a connected group of them with at least two rules each way is a table; its
rows and columns are the rules' positions. A cell spanning several grid cells (no rule between them)
is read once, into its first grid cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .document_text import Word, group_lines

#: a rule is at least this share of the page's width (horizontal) or height (vertical)...
MIN_RULE_SHARE = (1 / 30, 1 / 60)
#: ...and, to count as one of a table's rows or columns, spans this share of the table
RULE_SPAN = 0.5


@dataclass
class Grid:
    bbox: tuple[float, float, float, float]
    rows: list[float]  # the horizontal rules' y, top to bottom
    columns: list[float]  # the vertical rules' x, left to right


def find_grids(image: np.ndarray) -> list[Grid]:
    """The ruled tables of a page image (RGB uint8)."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    ink = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY_INV, 15, 10)
    height, width = ink.shape
    across = max(int(width * MIN_RULE_SHARE[0]), 10)
    down = max(int(height * MIN_RULE_SHARE[1]), 10)
    horizontal = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (across, 1)))
    vertical = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, down)))
    # rules that meet at a corner may miss each other by a pixel: close the gap before grouping
    joined = cv2.dilate(horizontal | vertical, np.ones((5, 5), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    grids = []
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        rows = _rule_positions(horizontal[y:y + h, x:x + w], axis=1, span=w) + y
        columns = _rule_positions(vertical[y:y + h, x:x + w], axis=0, span=h) + x
        if len(rows) >= 2 and len(columns) >= 2:
            grids.append(Grid((float(x), float(y), float(x + w), float(y + h)),
                              [float(v) for v in rows], [float(v) for v in columns]))
    return grids


def _rule_positions(mask: np.ndarray, axis: int, span: int) -> np.ndarray:
    """The centres of the runs of rows (axis=1) or columns (axis=0) whose rule spans the table."""
    covered = (mask > 0).sum(axis=axis) >= RULE_SPAN * span
    positions, start = [], None
    for i, on in enumerate(list(covered) + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            positions.append((start + i - 1) / 2)
            start = None
    return np.array(positions, dtype=np.float64)


def fill(grid: Grid, words: list[Word]) -> tuple[list[list[str]], list[Word]]:
    """The grid's cells' text (rows of cells) and the words it took; a word belongs to the cell its
    centre lies in, words in a cell are read line by line, left to right."""
    cells: dict[tuple[int, int], list[Word]] = {}
    taken = []
    for word in words:
        cx, cy = word.center
        row = int(np.searchsorted(grid.rows, cy)) - 1
        column = int(np.searchsorted(grid.columns, cx)) - 1
        if 0 <= row < len(grid.rows) - 1 and 0 <= column < len(grid.columns) - 1:
            cells.setdefault((row, column), []).append(word)
            taken.append(word)
    table = []
    for row in range(len(grid.rows) - 1):
        table.append([_cell_text(cells.get((row, column), [])) for column in range(len(grid.columns) - 1)])
    return table, taken


def _cell_text(words: list[Word]) -> str:
    return " ".join(line.text for line in group_lines(words))  # its lines top to bottom
