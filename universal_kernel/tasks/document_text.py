"""A page's words and lines, with their boxes and type size, from either source of text:
- a PDF's own text layer (pypdfium2's character boxes and font sizes): exact, nothing to recognise;
- the lines a text reader (rapidocr) finds on a scanned page or an image: words are placed along their line in
  proportion to their characters, and a line's type size is its box's height.

Sizes only ever compare within one page (a title is larger than the page's body text), so the two
sources need not agree on what a size is. Boxes are in pixels of the page image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Word:
    text: str
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    size: float  # the type size, in pixels
    confidence: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2


@dataclass
class Line:
    words: list[Word] = field(default_factory=list)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (min(w.bbox[0] for w in self.words), min(w.bbox[1] for w in self.words),
                max(w.bbox[2] for w in self.words), max(w.bbox[3] for w in self.words))

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def size(self) -> float:
        return float(np.median([w.size for w in self.words]))

    @property
    def confidence(self) -> float:
        return float(np.mean([w.confidence for w in self.words]))

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]


def text_layer_words(page, scale: float) -> list[Word]:
    """The words of a PDF page's text layer (pypdfium2 `PdfPage`); empty when it has none (a scan)."""
    import pypdfium2.raw as pdfium_c

    textpage = page.get_textpage()
    try:
        height = page.get_height()
        words: list[Word] = []
        chars: list[tuple[str, tuple, float]] = []

        def flush():
            if chars:
                boxes = np.array([box for _, box, _ in chars])
                words.append(Word("".join(c for c, _, _ in chars),
                                  (float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                   float(boxes[:, 2].max()), float(boxes[:, 3].max())),
                                  float(np.median([size for _, _, size in chars]))))
                chars.clear()

        for i in range(textpage.count_chars()):
            char = chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i))
            if char.isspace() or not char.isprintable() or pdfium_c.FPDFText_IsGenerated(textpage.raw, i) == 1:
                flush()
                continue
            left, bottom, right, top = textpage.get_charbox(i)
            # PDF points from the bottom left -> pixels of the rendered page from the top left
            box = (left * scale, (height - top) * scale, right * scale, (height - bottom) * scale)
            size = float(pdfium_c.FPDFText_GetFontSize(textpage.raw, i)) * scale
            if chars:
                last = chars[-1][1]
                gap, tall = box[0] - last[2], max(last[3] - last[1], box[3] - box[1], 1.0)
                # another word without a space between: a jump back, down, or a wide gap (table cells)
                if gap > 0.6 * tall or gap < -0.5 * tall or abs(box[3] - last[3]) > 0.5 * tall:
                    flush()
            chars.append((char, box, size))
        flush()
        return words
    finally:
        textpage.close()


def line_words(found: dict) -> list[Word]:
    """Words from the lines a text reader found on a page image (`read_images(..., boxes=True)` rows)."""
    words = []
    for row in found.get("boxes") or []:
        text = str(row["text"])
        x1, y1, x2, y2 = float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"])
        parts = text.split()
        if not parts:
            continue
        # each word gets a share of the line's width in proportion to its characters (a space is one)
        per_char = (x2 - x1) / max(len(" ".join(parts)), 1)
        start = x1
        for part in parts:
            end = start + per_char * len(part)
            words.append(Word(part, (start, y1, end, y2), y2 - y1, float(row["confidence"])))
            start = end + per_char
    return words


def group_lines(words: list[Word]) -> list[Line]:
    """Words into lines: left to right, a word joins the line it continues (on its height, close after
    its last word); a wide gap starts another line (another column, another cell)."""
    lines: list[Line] = []
    for word in sorted(words, key=lambda w: w.bbox[0]):
        best, best_overlap = None, 0.0
        for line in lines:
            last = line.words[-1]
            tall = max(last.bbox[3] - last.bbox[1], word.bbox[3] - word.bbox[1], 1.0)
            overlap = min(last.bbox[3], word.bbox[3]) - max(last.bbox[1], word.bbox[1])
            gap = word.bbox[0] - last.bbox[2]
            if overlap >= 0.5 * tall and -0.5 * tall <= gap <= 1.5 * tall and overlap > best_overlap:
                best, best_overlap = line, overlap
        if best is None:
            lines.append(Line([word]))
        else:
            best.words.append(word)
    return sorted(lines, key=lambda line: (line.bbox[1], line.bbox[0]))
