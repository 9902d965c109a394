"""Encoder embeddings through transformers, pooled as the model's sentence-transformers config says.

Inputs are deduplicated, sorted by length and cut into batches by a token budget, so padding
stays small; results come back in input order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..devices import Device, torch_dtype
from ..errors import LoadFailed
from ..references import ModelSpec
from .base import Backend
from .transformers_lm import import_transformers


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


class TransformersEmbedBackend(Backend):
    name = "transformers"

    #: tokens (batch rows x padded length) per forward pass
    token_budget = 8192
    max_batch = 256

    def __init__(self, spec: ModelSpec, *, device: Device, threads: int):
        super().__init__(spec)
        torch, transformers = import_transformers()
        torch.set_num_threads(threads)
        self.torch = torch
        self.device = str(device)
        self.pooling, self.normalizes, max_len = read_pooling(spec.path)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.path)
            self.model = transformers.AutoModel.from_pretrained(spec.path, dtype=torch_dtype(device))
            self.model.to(device.torch_name).eval()
        except Exception as exc:
            raise LoadFailed(f"transformers could not load {spec.id!r}: {exc}") from None
        limits = [n for n in (max_len, self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None)) if n]
        self.max_length = min(limits) if limits else 512
        self.dimensions = int(self.model.config.hidden_size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def embed(self, texts: list[str], normalize: bool = True):
        torch = self.torch
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        distinct = list(unique)
        encoded = self.tokenizer(distinct, truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        prompt_tokens = int(sum(lengths[unique[t]] for t in texts))
        out = np.empty((len(distinct), self.dimensions), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in self._batches(order, lengths):
                width = int(lengths[batch[0]])
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, index in enumerate(batch):
                    n = int(lengths[index])
                    ids[row, :n] = torch.tensor(encoded[index])
                    mask[row, :n] = 1
                ids, mask = ids.to(self.model.device), mask.to(self.model.device)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = self._pool(hidden, mask)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[batch] = pooled.float().cpu().numpy()
        rows = np.fromiter((unique[t] for t in texts), dtype=np.int64, count=len(texts))
        return out[rows], prompt_tokens

    def _batches(self, order, lengths):
        # Longest first: the first row of each batch sets its padded width.
        start = 0
        while start < len(order):
            width = max(int(lengths[order[start]]), 1)
            size = max(1, min(self.max_batch, self.token_budget // width))
            yield order[start:start + size]
            start += size

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
        model = getattr(self, "model", None)
        if model is not None:
            for p in model.parameters():
                p.data = self.torch.empty(0)
            self.model = None
        self.tokenizer = None
