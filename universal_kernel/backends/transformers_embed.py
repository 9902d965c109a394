"""Encoder embeddings through transformers, pooled as the model's sentence-transformers config says.

Inputs are deduplicated, sorted by length and cut into batches by a token budget, so padding
stays small; results come back in input order. Batches are padded to a few fixed shapes (padded_width,
padded_rows) so that the kernels torch and ONNX Runtime keep per shape stay few (issue 31).
"""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import numpy as np

from ..devices import Device, torch_dtype
from ..errors import LoadFailed
from ..precision import candidate, probed
from ..model_spec import ModelSpec
from .base import Backend
from .transformers_lm import free_model, import_transformers, quiet_progress


def read_pooling(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalise by default, max sequence length) from the sentence-transformers files."""
    mode, normalize, max_len = "mean", False, None
    modules_file = folder / "modules.json"
    if modules_file.exists():
        for module in json.loads(modules_file.read_text()):
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                config_file = folder / module.get("path", "") / "config.json"
                if config_file.exists():
                    config = json.loads(config_file.read_text())
                    if config.get("pooling_mode_cls_token"):
                        mode = "cls"
                    elif config.get("pooling_mode_max_tokens"):
                        mode = "max"
                    elif config.get("pooling_mode_lasttoken"):
                        mode = "last"
    st_config = folder / "sentence_bert_config.json"
    if st_config.exists():
        max_len = json.loads(st_config.read_text()).get("max_seq_length")
    return mode, normalize, max_len


def padded_width(width: int, max_length: int) -> int:
    """The width a batch whose longest row has `width` tokens is padded to: a multiple of 8 up to 128 tokens,
    of 16 beyond, never past `max_length`. Why: oneDNN (torch's CPU kernels, bf16 autocast above all) and
    ONNX Runtime keep what they build per input shape, so a server embedding texts of every length grew
    without end (issue 31). A few fixed widths bound that set; they cost padding (bench/_common's mixed
    texts, MiniLM: 7.7 % more tokens than each batch's own longest row, where multiples of 32 past 64 cost 13 %)."""
    step = 8 if width <= 128 else 16
    return max(1, min(-(-width // step) * step, max(max_length, width)))


def padded_rows(rows: int, limit: int) -> int:
    """The rows a batch of `rows` is padded to: a power of two up to 8, a multiple of 8 beyond, never past
    `limit` (the batch size its width allows), so its shapes are as few as its widths (see padded_width)."""
    bucket = 1 << max(rows - 1, 0).bit_length() if rows <= 8 else -(-rows // 8) * 8
    return max(rows, min(bucket, limit))


def token_budget_batches(order, lengths, max_batch: int, token_budget: int, max_length: int | None = None):
    """Rows in `order` (longest first) cut into batches of at most `token_budget` padded tokens: the first
    row of each batch sets its padded width (bucketed by `padded_width` when `max_length` is given)."""
    start = 0
    while start < len(order):
        width = max(int(lengths[order[start]]), 1)
        if max_length is not None:
            width = padded_width(width, max_length)
        size = max(1, min(max_batch, token_budget // width))
        yield order[start:start + size]
        start += size


def padded_batch(encoded, batch, lengths, pad_id: int, shape: tuple[int, int] | None = None):
    """The rows `batch` of `encoded` (token id lists; `lengths` theirs, longest first) as padded int64 ids
    and a bool mask, built in numpy in one pass (the ONNX backend feeds the same arrays to ONNX Runtime).
    `shape` (rows, width), from `batch_shape`, pads further: the extra rows repeat the last real one (a real
    row, not an empty mask, which some attention kernels turn into NaN); callers keep the first len(batch)."""
    batch_lengths = lengths[batch]
    rows, width = shape or (len(batch), max(int(batch_lengths[0]), 1))
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.arange(width)[None, :] < batch_lengths[:, None]
    ids[mask] = np.fromiter(itertools.chain.from_iterable(encoded[i] for i in batch),
                            dtype=np.int64, count=int(batch_lengths.sum()))
    if rows > len(batch):
        extra = rows - len(batch)
        ids = np.concatenate([ids, np.repeat(ids[-1:], extra, axis=0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, axis=0)])
    return ids, mask


def batch_shape(batch, lengths, max_length: int, max_batch: int, token_budget: int) -> tuple[int, int]:
    """(rows, width) that a batch from `token_budget_batches(..., max_length)` is padded to."""
    width = padded_width(max(int(lengths[batch[0]]), 1), max_length)
    return padded_rows(len(batch), max(1, min(max_batch, token_budget // width))), width


class TransformersEmbedBackend(Backend):
    name = "transformers"

    #: tokens (batch rows x padded length) per forward pass. Small batches keep MiniLM's activations in
    #: the CPU cache: on 2 cores 1024 gave 50 rows/s where 8192 gave 40 (sentence-transformers: 45).
    token_budget = 1024
    max_batch = 256
    #: batches at most this many tokens wide run attention with torch's plain (math) kernel: there the
    #: flash kernel's fixed cost outweighs the tiny products (128 rows x 8 tokens: 1.9 ms vs 5.2 ms per
    #: layer's attention on Zen 1, 2 threads; texts of <= 24 tokens embed 1.07x faster); from 32 tokens
    #: wide the flash kernel wins. Same arithmetic: vectors agree to cosine 0.9999998.
    math_attention_width = 24

    def __init__(self, spec: ModelSpec, *, device: Device, threads: int, precision: str = "auto",
                 min_cosine: float = 0.9999):
        super().__init__(spec)
        torch, transformers = import_transformers()
        torch.set_num_threads(threads)
        self.torch = torch
        self.device = str(device)
        self.pooling, self.normalizes, max_len = read_pooling(spec.path)
        choice = candidate(device, precision)
        self._autocast = False
        try:
            with quiet_progress(transformers):
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.path)
                dtype = torch.float32 if choice.name == "fp32" or choice.autocast else torch_dtype(device)
                self.model = transformers.AutoModel.from_pretrained(spec.path, dtype=dtype)
            self.model.to(device.torch_name).eval()
        except Exception as exc:
            raise LoadFailed(f"transformers could not load {spec.id!r}: {exc}") from None
        limits = [n for n in (max_len, self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None)) if n]
        self.max_length = min(limits) if limits else 512
        # embed() truncates as sentence-transformers does; rerank and classify refuse longer texts
        self.max_input_tokens = self.max_length
        self.dimensions = int(self.model.config.hidden_size)
        self._last_lengths: dict[str, int] = {}
        # bf16 on a CPU only behind the probe (universal_kernel/precision.py); precision.reason says why
        self.precision = probed(choice, lambda texts: self._probe(texts, False), lambda texts: self._probe(texts, True),
                                min_cosine)
        self._autocast = self.precision.autocast

    def _probe(self, texts: list[str], autocast: bool):
        self._autocast = autocast
        try:
            return self.embed(texts, normalize=True)[0]
        finally:
            self._autocast = False

    def vector_settings(self) -> dict:
        """What changes this backend's vectors besides the weights (keys of the embedding cache on disk)."""
        return {"pooling": self.pooling, "max_length": self.max_length, "dimensions": self.dimensions,
                "dtype": str(self.model.dtype), "precision": self.precision.name, "device": self.device.split(":")[0]}

    def count_tokens(self, text: str) -> int:
        # The runtime asks for each embedded text's count right after `embed`: answer from its lengths.
        known = self._last_lengths.get(text)
        if known is not None:
            return known
        return len(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def token_counts(self, texts: list[str]) -> list[int]:
        """Each text's tokens, not truncated: one call of the fast tokenizer for all of them."""
        if not texts:
            return []
        encoded = self.tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: list[str], normalize: bool = True):
        torch = self.torch
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        distinct = list(unique)
        if not distinct:
            return np.zeros((0, self.dimensions), dtype=np.float32), 0
        # One call of the fast (Rust) tokenizer for every distinct text, no padding, no tensors.
        encoded = self.tokenizer(distinct, truncation=True, max_length=self.max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        self._last_lengths = dict(zip(distinct, lengths.tolist()))
        rows = np.fromiter((unique[t] for t in texts), dtype=np.int64, count=len(texts))
        prompt_tokens = int(lengths[rows].sum())
        out = np.empty((len(distinct), self.dimensions), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in self._batches(order, lengths):
                shape = batch_shape(batch, lengths, self.max_length, self.max_batch, self.token_budget)
                ids, mask = padded_batch(encoded, batch, lengths, pad_id, shape)
                width = ids.shape[1]
                # built in numpy, handed to torch without a copy
                ids_t = torch.from_numpy(ids).to(self.model.device)
                mask_t = torch.from_numpy(mask.astype(np.int64)).to(self.model.device)
                with self._precision_context(), self._attention_kernel(width):
                    hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
                pooled = self._pool(hidden.float() if self._autocast else hidden, mask_t)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch] = pooled[:len(batch)].float().cpu().numpy()
        return out[rows], prompt_tokens

    def _precision_context(self):
        if self._autocast:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def _attention_kernel(self, width: int):
        if width <= self.math_attention_width and self.device.startswith("cpu"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def _batches(self, order, lengths):
        return token_budget_batches(order, lengths, self.max_batch, self.token_budget, self.max_length)

    def _pool(self, hidden, mask):
        torch = self.torch
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last]
        expanded = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "max":
            return hidden.masked_fill(expanded == 0, -1e9).max(dim=1).values
        return (hidden * expanded).sum(dim=1) / expanded.sum(dim=1).clamp(min=1e-9)

    def close(self) -> None:
        self._last_lengths = {}
        free_model(self)
