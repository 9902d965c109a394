"""Classifier heads through transformers: sequence classifiers, cross-encoders and token classifiers.

Inputs longer than the model's positions are refused unless the caller asks for truncation: a
silently cut text would get a label for a part of it.

Precision is chosen per device as for embeddings (universal_kernel/precision.py): half weights on a
GPU; on a CPU, bf16 matrix products under autocast where the CPU has AVX512_BF16/AMX (or where
`precision="bf16"` asks), kept only if a probe at load finds the head's outputs on fixed probe texts
within `max_probe_error` of fp32; `self.precision` says which and why.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..devices import Device, torch_dtype
from ..errors import InvalidRequest, LoadFailed, WrongTask
from ..precision import PROBE_QUERY, PROBE_TEXTS, candidate, probed_close
from ..model_spec import ModelSpec
from .base import Backend
from .transformers_embed import token_budget_batches
from .transformers_lm import free_model, import_transformers, quiet_progress

#: a tokenizer without a configured limit reports this huge number
_NO_LIMIT = 10**6


class _ClassifierBase(Backend):
    name = "transformers"
    auto_class = "AutoModelForSequenceClassification"

    #: how far (absolute) a bf16 probe probability may be from fp32's for bf16 to be kept. Scores are
    #: probabilities in 0..1, shown to two decimals: within 0.01 a shown score moves by at most one
    #: unit in its last place, and two labels (or documents) swap only where fp32 itself had them
    #: within 0.02 of each other, a near tie either way. On MiniLM's encoder with seeded heads bf16 measured
    #: 0.003 (3-label classifier) and 0.0007 (cross-encoder); per-token NER probabilities 0.03, so a tagger
    #: keeps fp32 unless its probe does better.
    max_probe_error = 0.01

    def __init__(self, spec: ModelSpec, *, device: Device, threads: int, precision: str = "auto",
                 max_probe_error: float | None = None):
        super().__init__(spec)
        torch, transformers = import_transformers()
        torch.set_num_threads(threads)
        self.torch = torch
        self.transformers = transformers
        self.device = str(device)
        choice = candidate(device, precision)
        self._autocast = False
        try:
            with quiet_progress(transformers):
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
                model_class = getattr(transformers, self.auto_class)
                dtype = torch.float32 if choice.name == "fp32" or choice.autocast else torch_dtype(device)
                self.model = model_class.from_pretrained(spec.path, dtype=dtype, local_files_only=True)
            self.model.to(device.torch_name).eval()
        except Exception as exc:
            raise LoadFailed(f"transformers could not load {spec.id!r}: {exc}") from None
        limits = [n for n in (self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None)) if n and n < _NO_LIMIT]
        self.max_input_tokens = min(limits) if limits else None
        if self.max_input_tokens:
            # Truncation (ours and the pipeline's) cuts at the model's real limit.
            self.tokenizer.model_max_length = self.max_input_tokens
        # We measure lengths ourselves and refuse long inputs with a typed error: no tokenizer warning.
        self.tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        if max_probe_error is not None:
            self.max_probe_error = max_probe_error
        self.precision = probed_close(choice, lambda: self._probe_with(False), lambda: self._probe_with(True),
                                      self.max_probe_error, self.probe_what)
        self._autocast = self.precision.autocast

    #: what the probe compares, for precision.reason
    probe_what = "probability"

    def _probe_with(self, autocast: bool) -> np.ndarray:
        self._autocast = autocast
        try:
            return self._probe()
        finally:
            self._autocast = False

    def _probe(self) -> np.ndarray:
        """The head's outputs on the fixed probe texts, flat (subclasses)."""
        raise NotImplementedError

    def _precision_context(self):
        if self._autocast:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _encode(self, first: list[str], second: list[str] | None, truncate: bool, what: str, param: str):
        """Token ids (and types and masks) per input, checked against the model's limit."""
        cut = bool(truncate and self.max_input_tokens)
        encoded = self.tokenizer(first, second, truncation=cut, max_length=self.max_input_tokens if cut else None)
        lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(first))
        if not cut and self.max_input_tokens:
            too_long = np.flatnonzero(lengths > self.max_input_tokens)
            if too_long.size:
                i = int(too_long[0])
                raise InvalidRequest(f"{what}[{i}] has {int(lengths[i])} tokens; {self.spec.id} takes at most "
                                     f"{self.max_input_tokens} (ask for truncation)", param=param)
        return encoded, lengths

    def close(self) -> None:
        self.__dict__.pop("pipeline", None)
        free_model(self)


class TransformersSequenceClassifier(_ClassifierBase):
    """A `*ForSequenceClassification` model: its own labels, or with one logit a cross-encoder."""

    #: tokens (rows x padded length) per forward pass, as in the embedding backend
    token_budget = 2048
    max_batch = 64

    def classify(self, texts: list[str], *, truncate: bool = False) -> tuple[list[dict[str, float]], int]:
        encoded, lengths = self._encode(texts, None, truncate, "input", "input")
        logits = self._logits(encoded, lengths)
        id2label = self.model.config.id2label or {}
        names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(logits.shape[1])]
        if logits.shape[1] == 1:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            results.append({names[j]: float(row[j]) for j in order})
        return results, int(lengths.sum())

    def score_pairs(self, query: str, documents: list[str], *, truncate: bool = False) -> tuple[list[float], int]:
        if self.model.config.num_labels != 1:
            raise WrongTask(f"{self.spec.id!r} is not a cross-encoder: it has {self.model.config.num_labels} "
                            "labels, a cross-encoder one relevance logit")
        encoded, lengths = self._encode([query] * len(documents), documents, truncate, "documents", "documents")
        logits = self._logits(encoded, lengths)[:, 0]
        return (1.0 / (1.0 + np.exp(-logits))).tolist(), int(lengths.sum())

    def _logits(self, encoded, lengths) -> np.ndarray:
        """float32 logits in input order; inputs run longest first so each batch pads little."""
        torch = self.torch
        out = np.empty((len(lengths), self.model.config.num_labels), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        pads = {"input_ids": self.tokenizer.pad_token_id or 0,
                "token_type_ids": self.tokenizer.pad_token_type_id, "attention_mask": 0}
        left = self.tokenizer.padding_side == "left"
        with torch.inference_mode():
            for batch in self._batches(order, lengths):
                width = int(lengths[batch[0]])
                inputs = {}
                for key in keys:
                    rows = np.full((len(batch), width), pads[key], dtype=np.int64)
                    for r, i in enumerate(batch):
                        values = encoded[key][i]
                        if left:
                            rows[r, width - len(values):] = values
                        else:
                            rows[r, :len(values)] = values
                    inputs[key] = torch.from_numpy(rows).to(self.model.device)
                with self._precision_context():
                    logits = self.model(**inputs).logits
                out[batch] = logits.float().cpu().numpy()
        return out

    def _probe(self) -> np.ndarray:
        """Probabilities on the probe texts: every label's for a classifier, the relevance of each
        probe text to a fixed query for a cross-encoder."""
        texts = list(PROBE_TEXTS)
        if self.model.config.num_labels == 1:
            return np.asarray(self.score_pairs(PROBE_QUERY, texts, truncate=True)[0])
        rows, _ = self.classify(texts, truncate=True)
        return np.array([[row[k] for k in sorted(row)] for row in rows])

    def _batches(self, order, lengths):
        return token_budget_batches(order, lengths, self.max_batch, self.token_budget)


class TransformersTokenClassifier(_ClassifierBase):
    """A `*ForTokenClassification` model: entities grouped by transformers' own token-classification
    pipeline (B-/I- tags merged, offsets from the fast tokenizer)."""

    auto_class = "AutoModelForTokenClassification"
    batch_size = 16
    probe_what = "token's label probability"

    def __init__(self, spec: ModelSpec, *, device: Device, threads: int, precision: str = "auto",
                 max_probe_error: float | None = None):
        super().__init__(spec, device=device, threads=threads, precision=precision, max_probe_error=max_probe_error)
        try:
            self.pipeline = self.transformers.pipeline(
                "token-classification", model=self.model, tokenizer=self.tokenizer,
                aggregation_strategy="simple", device=self.model.device)
        except Exception as exc:
            raise LoadFailed(f"transformers could not build a token-classification pipeline for "
                             f"{spec.id!r}: {exc}") from None

    def ner(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[dict]], int]:
        _, lengths = self._encode(texts, None, truncate, "input", "input")
        results: list[list[dict]] = [[] for _ in texts]
        # The pipeline fails on an empty text; a text of blanks has no entity anyway.
        todo = [i for i, text in enumerate(texts) if text.strip()]
        if todo:
            with self.torch.inference_mode(), self._precision_context():
                found = self.pipeline([texts[i] for i in todo], batch_size=self.batch_size)
            for i, entities in zip(todo, found):
                results[i] = [e for e in (self._entity(texts[i], raw) for raw in entities) if e]
        return results, int(lengths.sum())

    def _probe(self) -> np.ndarray:
        """Every label's probability at every token of the probe texts: the entities (their labels,
        spans and scores) follow from these, so a probe within the tolerance here keeps them."""
        torch, rows = self.torch, []
        with torch.inference_mode():
            for text in PROBE_TEXTS:
                inputs = self.tokenizer(text, truncation=bool(self.max_input_tokens), return_tensors="pt")
                inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
                with self._precision_context():
                    logits = self.model(**inputs).logits
                rows.append(torch.softmax(logits.float(), dim=-1)[0].cpu().numpy().ravel())
        return np.concatenate(rows)

    @staticmethod
    def _entity(text: str, raw: dict) -> dict | None:
        start, end = int(raw["start"]), int(raw["end"])
        # Byte-level tokenizers count the space before a word into its offsets: trim it.
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end:
            return None
        return {"text": text[start:end], "label": str(raw["entity_group"]), "start": start, "end": end,
                "score": float(raw["score"])}
