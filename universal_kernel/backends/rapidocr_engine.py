"""RapidOCR: PP-OCR text detection, direction classification and recognition, ONNX models on onnxruntime.

The ONNX files ship inside the rapidocr wheel (the model's folder is rapidocr's package folder): they
are named to RapidOCR explicitly, so that it never looks for (or downloads) other files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, LoadFailed
from ..model_spec import ModelSpec
from .base import Backend


def _model_file(folder: Path, pattern: str) -> Path:
    found = sorted((folder / "models").glob(pattern))
    if not found:
        raise LoadFailed(f"no {pattern} in {folder / 'models'}")
    return found[0]


class RapidOcrBackend(Backend):
    name = "rapidocr"
    device = "cpu"

    def __init__(self, spec: ModelSpec, *, threads: int):
        super().__init__(spec)
        try:
            from rapidocr import RapidOCR
            from rapidocr.utils.log import logger as rapidocr_logger
        except ImportError as exc:
            raise BackendUnavailable(f"{spec.id!r} needs rapidocr and onnxruntime "
                                     f"(pip install rapidocr onnxruntime): {exc}") from None
        folder = Path(spec.path)
        params = {
            "Det.model_path": str(_model_file(folder, "*det*.onnx")),
            "Rec.model_path": str(_model_file(folder, "*rec*.onnx")),
            "Cls.model_path": str(_model_file(folder, "*cls*.onnx")),
            # its INFO lines ("Using ...") and the warning on an image without text are noise in a notebook
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            engine = RapidOCR(params=params)
            # RapidOCR opens its sessions on first use; open them now, so that the load is the load
            engine._load_det_model()
            engine._load_cls_model()
            engine._load_rec_model()
        except Exception as exc:  # noqa: BLE001 - onnxruntime's and omegaconf's errors have no common base
            raise LoadFailed(f"cannot load {spec.id!r}: {type(exc).__name__}: {exc}") from exc
        rapidocr_logger.setLevel(logging.ERROR)
        self.engine = engine

    def read_images(self, images: list[np.ndarray], *, boxes: bool = False, turned_lines: bool = True) -> list[dict]:
        """Per image (RGB uint8, HxWx3): its lines top to bottom, their mean confidence and, if asked, boxes.
        `turned_lines=False` skips the line-orientation classifier, for pages known to be upright: it turns
        some long upright lines (a full-width line of a page) upside down, and they read as garbage."""
        return [self._read(image, boxes, turned_lines) for image in images]

    def _read(self, image: np.ndarray, boxes: bool, turned_lines: bool = True) -> dict:
        # a numpy array goes to the engine as it is, and the engine works in OpenCV's BGR order
        bgr = np.ascontiguousarray(image[..., ::-1])
        out = self.engine(bgr, use_det=True, use_cls=turned_lines, use_rec=True)
        texts = list(out.txts or ())
        scores = [float(s) for s in (out.scores or ())]
        quads = [] if out.boxes is None else np.asarray(out.boxes, dtype=np.float64).reshape(-1, 4, 2)
        lines = sorted(zip(quads, texts, scores), key=lambda line: (line[0][:, 1].min(), line[0][:, 0].min()))
        height, width = image.shape[:2]
        found = {
            "text": "\n".join(text for _, text, _ in lines),
            "confidence": float(np.mean([score for _, _, score in lines])) if lines else 0.0,
            "boxes": None,
        }
        if boxes:
            found["boxes"] = [
                {"x1": float(np.clip(quad[:, 0].min(), 0, width)), "y1": float(np.clip(quad[:, 1].min(), 0, height)),
                 "x2": float(np.clip(quad[:, 0].max(), 0, width)), "y2": float(np.clip(quad[:, 1].max(), 0, height)),
                 "text": text, "confidence": score}
                for quad, text, score in lines]
        return found

    def close(self) -> None:
        self.engine = None  # the onnxruntime sessions go with it
