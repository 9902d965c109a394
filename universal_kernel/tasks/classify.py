"""Classify: a label and its probability per text.

- A classifier folder (`*ForSequenceClassification`) or a spaCy pipeline with a text classifier:
  the model's own classes (given `labels` narrow them and renormalise).
- Zero-shot with `labels`, on an embedding model: the cosine of the text's vector to each label's,
  then a softmax at temperature `ZERO_SHOT_TEMPERATURE`, so the scores sum to 1.
- Zero-shot with `labels`, on a chat model: each label's probability as the model's answer (the
  backend's `classify_labels`: a decode constrained to the labels, computed exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidRequest
from ..stats import RequestStats
from . import TaskCall, check_lengths, texts_input

#: cosines of MiniLM-like models to short labels differ by a few hundredths: a softmax of the raw
#: cosines would be near uniform; at 0.05 a difference of 0.1 gives odds of about 7 to 1
ZERO_SHOT_TEMPERATURE = 0.05


@dataclass
class Classification:
    label: str  # the best label
    score: float  # its probability
    scores: dict[str, float]  # every label's probability, best first


@dataclass
class ClassifyResult:
    model: str
    rows: list[Classification]  # one per input, in input order
    prompt_tokens: int
    stats: RequestStats


def classify(runtime, texts: list[str] | str, model: str | None = None, labels: list[str] | None = None, *,
             backend: str = "auto", keep_alive: float | None = None, truncate: bool = False) -> ClassifyResult:
    """A label and its probability per text: the model's own classes, or zero-shot over `labels`."""
    return runtime.run(call(texts, model, labels, backend=backend, keep_alive=keep_alive, truncate=truncate))


def labels_input(labels) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [part for part in labels.split(",")]
    if not isinstance(labels, (list, tuple)) or not labels:
        raise InvalidRequest("labels must be a non-empty list of strings", param="labels")
    cleaned: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise InvalidRequest("labels must be non-empty strings", param="labels")
        label = label.strip()
        if label in cleaned:
            raise InvalidRequest(f"label {label!r} is given twice", param="labels")
        cleaned.append(label)
    return cleaned


def call(texts, model: str | None = None, labels=None, *, backend: str = "auto", keep_alive: float | None = None,
         truncate: bool = False) -> TaskCall:
    inputs = {"texts": texts_input(texts), "labels": labels_input(labels), "truncate": bool(truncate)}
    return TaskCall("classify", model, inputs, backend, keep_alive)


def check(spec, inputs) -> None:
    """Before anything loads: zero-shot needs labels, and a classifier's labels must be its own."""
    labels = inputs["labels"]
    if spec.task in ("embed", "generate") and not labels:
        kind = "an embedding" if spec.task == "embed" else "a chat"
        raise InvalidRequest(f"{spec.id!r} is {kind} model: classifying with it is zero-shot and needs labels",
                             param="labels")
    own = _own_labels(spec)
    if labels and own is not None:
        unknown = [label for label in labels if label not in own]
        if unknown:
            raise InvalidRequest(f"{spec.id!r} knows the labels {', '.join(own)}; not {', '.join(unknown)}",
                                 param="labels")


def _own_labels(spec) -> list[str] | None:
    if spec.format == "transformers" and spec.task == "classify":
        id2label = spec.metadata.get("id2label") or {}
        return [id2label[k] for k in sorted(id2label, key=lambda k: int(k))]
    return None


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _row(scores: dict[str, float], labels: list[str] | None):
    if labels:  # narrowed to the given labels, renormalised
        total = sum(scores.get(label, 0.0) for label in labels) or 1.0
        scores = {label: scores.get(label, 0.0) / total for label in labels}
    ordered = dict(sorted(scores.items(), key=lambda item: -item[1]))
    best = next(iter(ordered))
    return Classification(best, float(ordered[best]), {k: float(v) for k, v in ordered.items()})


def work(ctx):
    from .embed import embed_rows

    texts, labels, truncate = ctx.inputs["texts"], ctx.inputs["labels"], ctx.inputs["truncate"]

    def run(instance, emit, cancelled):
        if ctx.spec.task == "embed":
            check_lengths(instance, texts, truncate, "input")
            label_vectors, _ = embed_rows(ctx, instance, labels, True)
            text_vectors, tokens = embed_rows(ctx, instance, texts, True)
            probs = softmax((text_vectors @ label_vectors.T) / ZERO_SHOT_TEMPERATURE) if texts else []
            per_text = [dict(zip(labels, map(float, row))) for row in probs]
        elif ctx.spec.task == "generate":
            per_text, tokens = instance.classify_labels(texts, labels, truncate=truncate)
        else:
            per_text, tokens = instance.classify(texts, truncate=truncate)
            per_text = [row for row in per_text]
        ctx.stats.prompt_tokens = tokens
        rows = [_row(scores, labels if ctx.spec.task not in ("embed", "generate") else None)
                for scores in per_text]
        return ClassifyResult(ctx.spec.id, rows, tokens, ctx.stats)

    return run


# The wire (the HTTP client runtime; the schema is classify_wire.py) -------------------------------
PATH = "v1/classify"


def to_wire(call: TaskCall) -> dict:
    from .classify_wire import ClassifyRequest

    inputs = call.inputs
    return ClassifyRequest.of(call, input=inputs["texts"], labels=inputs["labels"], truncate=inputs["truncate"]).body()


def from_wire(payload: dict, call: TaskCall, stats):
    from .classify_wire import ClassifyResponse
    from .wire_base import read_response

    response = read_response(ClassifyResponse, payload, call.task)
    rows = [Classification(r.label, r.score, dict(r.scores)) for r in sorted(response.data, key=lambda r: r.index)]
    return ClassifyResult(response.model, rows, response.usage.prompt_tokens, stats)
