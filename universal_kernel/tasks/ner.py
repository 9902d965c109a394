"""NER: the named entities of each text, with character offsets into it.

A spaCy pipeline (`nlp.pipe`, only the components NER needs) or a `*ForTokenClassification` folder
(transformers' own entity grouping).
"""

from __future__ import annotations

from . import TaskCall, texts_input


def call(texts, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
         truncate: bool = False) -> TaskCall:
    return TaskCall("ner", model, {"texts": texts_input(texts), "truncate": bool(truncate)}, backend, keep_alive)


def entities(rows) -> list:
    from ..interface import Entity

    return [[Entity(str(e["text"]), str(e["label"]), int(e["start"]), int(e["end"]), float(e["score"]))
             for e in row] for row in rows]


def work(ctx):
    from ..interface import NerResult

    texts, truncate = ctx.inputs["texts"], ctx.inputs["truncate"]

    def run(instance, emit, cancelled):
        rows, tokens = instance.ner(texts, truncate=truncate)
        ctx.stats.prompt_tokens = tokens
        return NerResult(ctx.spec.id, entities(rows), tokens, ctx.stats)

    return run


# The wire (the HTTP client runtime) ----------------------------------------------------------------
PATH = "v1/ner"


def to_wire(call: TaskCall) -> dict:
    return {"model": call.model, "input": call.inputs["texts"], "truncate": call.inputs["truncate"]}


def from_wire(payload: dict, call: TaskCall, stats):
    from ..interface import NerResult

    rows = sorted(payload.get("data") or [], key=lambda r: r.get("index", 0))
    tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
    return NerResult(payload.get("model") or call.model, entities([r.get("entities") or [] for r in rows]),
                     tokens, stats)
