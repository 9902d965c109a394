"""An encoder exported to ONNX once, kept on disk beside the converted-weights cache.

- Exporter: `torch.onnx.export` (TorchScript exporter, opset 17, dynamic batch and length). optimum-onnx
  would pin transformers below the version this project runs, so it is not used.
- Where: `<convert_cache>/onnx/<key>/`, the key a digest of the weights' fingerprint (each file's path,
  size and mtime) and the exporter's version (torch's, read from its metadata: no import) and this
  module's format. New weights or a new torch give a new folder.
- What: `model.onnx` (the encoder, input ids and mask in, last hidden state out) and `export.json`: the
  model file's size and the torch fp32 reference vectors of the probe texts (precision.PROBE_TEXTS). A load
  checks the ONNX file against the reference every time without importing torch; a refusal (a corrupt
  or truncated file, or rows off the reference) re-exports.
- Written atomically: into a temporary folder beside the final one, renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

#: bump when what is exported changes (inputs, outputs, opset)
EXPORT_FORMAT = 1
OPSET = 17
#: the files `from_pretrained` reads the encoder from: their stamps key the export
_WEIGHT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")

#: exports run by this process (tests read it: a cached export runs none)
exports_run = 0


@dataclass(frozen=True)
class Export:
    model_file: Path
    reference: np.ndarray  # torch fp32 vectors of PROBE_TEXTS, normalised


def exporter_version() -> str:
    return f"torch {metadata.version('torch')} torch.onnx opset {OPSET} format {EXPORT_FORMAT}"


def weights_fingerprint(folder: Path) -> list:
    stamps = []
    for name in _WEIGHT_FILES:
        path = Path(folder) / name
        if path.exists():
            stat = path.stat()
            stamps.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return stamps


def export_folder(folder: Path, cache_root: Path) -> Path:
    key = json.dumps({"weights": weights_fingerprint(folder), "exporter": exporter_version()}, sort_keys=True)
    return Path(cache_root) / "onnx" / hashlib.sha256(key.encode()).hexdigest()[:32]


def cached_export(folder: Path, cache_root: Path) -> Export | None:
    """The export of these weights by this exporter, if one is on disk whole (its size as recorded)."""
    target = export_folder(folder, cache_root)
    try:
        record = json.loads((target / "export.json").read_text())
        model_file = target / "model.onnx"
        if model_file.stat().st_size != record["model_bytes"]:
            return None
        return Export(model_file, np.asarray(record["reference"], dtype=np.float32))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard(folder: Path, cache_root: Path) -> None:
    """Drop a refused export, so the next load exports again."""
    shutil.rmtree(export_folder(folder, cache_root), ignore_errors=True)


def export(folder: Path, cache_root: Path, torch_backend) -> Export:
    """Export the encoder that `torch_backend` (a loaded fp32 TransformersEmbedBackend) holds, with its
    vectors of the probe texts as the reference every later load is checked against."""
    global exports_run
    import torch

    from ..precision import PROBE_TEXTS

    target = export_folder(folder, cache_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    reference = torch_backend.embed(list(PROBE_TEXTS), normalize=True)[0]
    model = torch_backend.model

    class LastHiddenState(torch.nn.Module):
        # The exporter passes inputs positionally; the encoder's forward takes them by name.
        def __init__(self):
            super().__init__()
            self.encoder = model

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sample = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (sample != 0).to(torch.int64)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        import warnings

        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the exporter's notes on its own operator choices
            torch.onnx.export(LastHiddenState().eval(), (sample, mask), str(staging / "model.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in
                                            ("input_ids", "attention_mask", "last_hidden_state")},
                              opset_version=OPSET, dynamo=False)
        record = {"model_bytes": (staging / "model.onnx").stat().st_size, "exporter": exporter_version(),
                  "weights": weights_fingerprint(folder), "reference": reference.tolist()}
        (staging / "export.json").write_text(json.dumps(record))
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            # another process put its export there meanwhile: the same weights and exporter, so take it
            found = cached_export(folder, cache_root)
            if found is None:
                raise
            return found
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    exports_run += 1
    return Export(target / "model.onnx", np.asarray(reference, dtype=np.float32))
