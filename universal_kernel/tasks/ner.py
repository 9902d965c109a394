"""NER: the named entities of each text, with character offsets into it.

A spaCy pipeline (`nlp.pipe`, only the components NER needs) or a `*ForTokenClassification` folder
(transformers' own entity grouping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..stats import RequestStats
from . import TaskCall, texts_input


@dataclass
class Entity:
    text: str  # == the input's text[start:end]
    label: str
    start: int  # character offsets into the input
    end: int
    score: float


@dataclass
class NerResult:
    model: str
    rows: list[list[Entity]] = field(default_factory=list)  # the entities of each input, in input order
    prompt_tokens: int = 0
    stats: RequestStats | None = None


def ner(runtime, texts: list[str] | str, model: str | None = None, *, backend: str = "auto",
        keep_alive: float | None = None, truncate: bool = False) -> NerResult:
    """The named entities of each text, with character offsets into it."""
    return runtime.run(call(texts, model, backend=backend, keep_alive=keep_alive, truncate=truncate))


def call(texts, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
         truncate: bool = False) -> TaskCall:
    return TaskCall("ner", model, {"texts": texts_input(texts), "truncate": bool(truncate)}, backend, keep_alive)


def entities(rows) -> list:
    return [[Entity(str(e["text"]), str(e["label"]), int(e["start"]), int(e["end"]), float(e["score"]))
             for e in row] for row in rows]


def work(ctx):
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
    rows = sorted(payload.get("data") or [], key=lambda r: r.get("index", 0))
    tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
    return NerResult(payload.get("model") or call.model, entities([r.get("entities") or [] for r in rows]),
                     tokens, stats)
