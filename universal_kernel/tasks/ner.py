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


# The wire (the HTTP client runtime; the schema is ner_wire.py) ------------------------------------
PATH = "v1/ner"


def to_wire(call: TaskCall) -> dict:
    from .ner_wire import NerRequest

    return NerRequest.of(call, input=call.inputs["texts"], truncate=call.inputs["truncate"]).body()


def from_wire(payload: dict, call: TaskCall, stats):
    from .ner_wire import NerResponse
    from .wire_base import read_response

    response = read_response(NerResponse, payload, call.task)
    rows = [[entity.model_dump() for entity in row.entities] for row in sorted(response.data, key=lambda r: r.index)]
    return NerResult(response.model, entities(rows), response.usage.prompt_tokens, stats)
