"""Encoder embeddings on ONNX Runtime (fp32), torch left unimported once the export exists.

- The model: exported once from the torch encoder (onnx_export.py), cached beside the converted weights.
- Tokens: the `tokenizers` library on the folder's tokenizer.json (the Rust tokenizer transformers' fast
  tokenizer wraps, with the same truncation), because transformers' AutoTokenizer imports torch.
- Batches, padding and pooling: as transformers_embed.py (its `token_budget_batches`, `padded_batch`,
  `read_pooling`); pooling in numpy.
- ORT's graph optimizations all on; `intra_op_num_threads` from the runtime's threads.
- A probe at every load: the probe texts' vectors within `min_cosine` (0.9999) of torch fp32's, whose
  reference the export stored. A refused cached file is exported again; a refused fresh export falls
  back to torch, the reason in the model's status.

`backend="onnx"` asks for it; "auto" stays torch (bf16 autocast behind its probe on bf16 CPUs, fp32
elsewhere: precision.py). Measured, MiniLM, 2 threads: on an Intel Xeon with AMX torch's bf16 autocast gave
220-240 rows/s against ONNX Runtime fp32's 25-34 (one process, 400 mixed texts), so there torch stays; on a
Zen 4 (avx512_bf16, no AMX) ONNX Runtime fp32 was 1.7-1.9x torch fp32 and 1.2x torch bf16 (issue 30). The
rule that follows (AMX: torch bf16; otherwise ONNX Runtime fp32) is not yet auto's: it moves the no-AMX
machines' default, every encoder test's reference there and the embedding cache's keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ..errors import LoadFailed
from ..precision import PROBE_TEXTS, Precision
from ..model_spec import ModelSpec
from . import onnx_export
from .base import Backend
from .transformers_embed import (TransformersEmbedBackend, batch_shape, padded_batch, read_pooling,
                                 token_budget_batches)


class OnnxRefused(Exception):
    """ONNX Runtime cannot serve this model as promised (no export, or the probe refused it)."""


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def load_encoder(spec: ModelSpec, *, device: str, threads: int, precision: str, min_cosine: float,
                 convert_cache: Path, why: str = "backend='onnx' asked for") -> Backend:
    """The ONNX encoder, or the torch one (with the reason in its precision) where ONNX is refused.
    `device` is the preference ("auto" included): ONNX Runtime runs on the CPU unless a GPU is named."""
    from ..devices import pick_device

    refusal = None
    named = (os.environ.get("UNIVERSAL_KERNEL_DEVICE") or device or "auto").lower()
    if precision == "bf16":
        refusal = "bf16 asked for, which ONNX Runtime does not serve here"
    elif named not in ("auto", "cpu"):
        refusal = f"the device {named!r} was asked for, where torch serves encoders"
    else:
        try:
            return OnnxEncoderBackend(spec, threads=threads, min_cosine=min_cosine, convert_cache=convert_cache,
                                      why=why)
        except OnnxRefused as exc:
            refusal = str(exc)
    backend = TransformersEmbedBackend(spec, device=pick_device(device), threads=threads, precision=precision,
                                       min_cosine=min_cosine)
    backend.precision = dataclasses.replace(
        backend.precision, reason=f"ONNX Runtime refused ({refusal}), torch serves it: {backend.precision.reason}")
    return backend


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence vectors from token states (batch, tokens, dims) and the bool mask, as sentence-transformers pools."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        return hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1]
    if mode == "max":
        return np.where(mask[..., None], hidden, np.float32(-1e9)).max(axis=1)
    weights = mask[..., None].astype(hidden.dtype)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


class OnnxEncoderBackend(Backend):
    name = "onnx"
    device = "cpu"
    token_budget = TransformersEmbedBackend.token_budget
    max_batch = TransformersEmbedBackend.max_batch

    def __init__(self, spec: ModelSpec, *, threads: int, min_cosine: float = 0.9999,
                 convert_cache: Path, why: str = "asked for"):
        super().__init__(spec)
        if not onnxruntime_installed():
            raise OnnxRefused("onnxruntime and onnx are not installed: pip install 'universal-kernel[onnx]'")
        import onnxruntime
        import tokenizers

        folder = Path(spec.path)
        self.threads = threads
        self.pooling, self.normalizes, max_len = read_pooling(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
            tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text()) \
                if (folder / "tokenizer_config.json").exists() else {}
            self.tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:
            raise OnnxRefused(f"no tokenizer.json or config.json to run it without transformers: {exc}") from None
        limits = [n for n in (max_len, tokenizer_config.get("model_max_length"),
                              config.get("max_position_embeddings")) if n]
        self.max_length = int(min(limits)) if limits else 512
        self.max_input_tokens = self.max_length
        self.dimensions = int(config["hidden_size"])
        # embed() truncates as transformers' fast tokenizer does; token_counts() counts whole texts
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        self._whole = tokenizers.Tokenizer.from_str(self.tokenizer.to_str())
        self._whole.no_truncation()
        pad = tokenizer_config.get("pad_token")
        self.pad_id = (self.tokenizer.token_to_id(pad) if isinstance(pad, str) else None) \
            or config.get("pad_token_id") or 0
        self._last_lengths: dict[str, int] = {}
        self._ort = onnxruntime
        self.session = None

        found = onnx_export.cached_export(folder, convert_cache)
        worst = None
        if found is not None:
            try:
                worst = self._open(found, min_cosine)
                origin = "cached export"
            except OnnxRefused:
                onnx_export.discard(folder, convert_cache)  # corrupt, or off the reference: export again
                found = None
        if found is None:
            found = self._export(folder, convert_cache, threads)
            try:
                worst = self._open(found, min_cosine)
            except OnnxRefused:
                onnx_export.discard(folder, convert_cache)
                raise
            origin = "fresh export"
        self.precision = Precision("fp32", f"ONNX Runtime fp32 ({why}); {origin}, probe: every row within cosine "
                                           f"{worst:.7f} of torch fp32 (>= {min_cosine:g})")

    def _export(self, folder: Path, convert_cache: Path, threads: int):
        from ..devices import pick_device

        reference = TransformersEmbedBackend(self.spec, device=pick_device("cpu"), threads=threads,
                                             precision="fp32")
        try:
            return onnx_export.export(folder, convert_cache, reference)
        except Exception as exc:
            raise OnnxRefused(f"the export failed: {exc}") from None
        finally:
            reference.close()

    def _open(self, found, min_cosine: float) -> float:
        """Start a session on the exported file and probe it against the reference; the worst row's cosine."""
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(found.model_file), options, providers=["CPUExecutionProvider"])
            trial = self.embed(list(PROBE_TEXTS), normalize=True)[0]
        except Exception as exc:
            self.session = None
            raise OnnxRefused(f"ONNX Runtime could not run the exported file: {exc}") from None
        if trial.shape != found.reference.shape:
            self.session = None
            raise OnnxRefused(f"the export's vectors have shape {trial.shape}, the reference {found.reference.shape}")
        worst = float((trial * found.reference).sum(axis=1).min())
        if not worst >= min_cosine:
            self.session = None
            raise OnnxRefused(f"the probe refused ONNX Runtime: a row at cosine {worst:.7f} of torch fp32 "
                              f"(< {min_cosine:g})")
        return worst

    def vector_settings(self) -> dict:
        """What changes this backend's vectors besides the weights (keys of the embedding cache on disk)."""
        return {"pooling": self.pooling, "max_length": self.max_length, "dimensions": self.dimensions,
                "dtype": "float32", "precision": "fp32", "device": "cpu", "engine": "onnxruntime"}

    def count_tokens(self, text: str) -> int:
        known = self._last_lengths.get(text)
        if known is not None:
            return known
        return len(self.tokenizer.encode(text).ids)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens, not truncated."""
        return [len(e.ids) for e in self._whole.encode_batch(texts)] if texts else []

    def embed(self, texts: list[str], normalize: bool = True):
        if self.session is None:
            raise LoadFailed(f"{self.spec.id!r} has no ONNX Runtime session")
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        distinct = list(unique)
        if not distinct:
            return np.zeros((0, self.dimensions), dtype=np.float32), 0
        encoded = [e.ids for e in self.tokenizer.encode_batch(distinct)]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        self._last_lengths = dict(zip(distinct, lengths.tolist()))
        rows = np.fromiter((unique[t] for t in texts), dtype=np.int64, count=len(texts))
        prompt_tokens = int(lengths[rows].sum())
        out = np.empty((len(distinct), self.dimensions), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        for batch in token_budget_batches(order, lengths, self.max_batch, self.token_budget, self.max_length):
            shape = batch_shape(batch, lengths, self.max_length, self.max_batch, self.token_budget)
            ids, mask = padded_batch(encoded, batch, lengths, self.pad_id, shape)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask.astype(np.int64)})[0]
            pooled = pool(hidden[:len(batch)], mask[:len(batch)], self.pooling)
            if normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[batch] = pooled
        return out[rows], prompt_tokens

    def close(self) -> None:
        self._last_lengths = {}
        self.session = None
