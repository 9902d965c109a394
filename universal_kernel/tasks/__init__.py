"""The tasks a runtime serves, found through one registry: `TASKS`.

Each task is one module per layer, named here by import path so that nothing is imported before it
is used (and so that the runtime never imports the server or the magics):
- `runtime`: the runtime part (`universal_kernel/tasks/<task>.py`): checks its inputs before anything
  loads, builds the work a model's worker runs, and maps its request and result to and from the wire;
- `serving`: the server's serving and routes (`server_ext/tasks/<task>.py`), whose request and response
  types are the task's wire schema (`universal_kernel/tasks/<task>_wire.py`, read by the HTTP client too);
- `magic`: the notebook magic (`universal_kernel/magics/<task>.py`);
- `upstream`: its routes in the compatibility door's shapes, if any (`server_ext/tasks/<task>_upstream.py`,
  whose `door_routes()` are relative to the door's root, `universal/runtime/`).

`models` says which models serve the task, as (format, model kind) pairs; "*" is any format. A model's
kind is what its files say it is (`ModelSpec.task`). `methods` names the runtime part's functions that
every runtime offers as methods (`rt.rerank(...)`: task_methods.py). A task's own settings are the
`SETTINGS` of its runtime part (`settings.Setting`s; `task_settings()` collects them for config.py).
Adding a task means adding its modules and one line in `TASKS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InvalidRequest, WrongTask

if TYPE_CHECKING:
    from ..model_spec import ModelSpec


@dataclass(frozen=True)
class TaskParts:
    name: str
    verb: str  # what a model that cannot do it cannot do: "rerank documents"
    models: frozenset[tuple[str, str]]
    runtime: str
    serving: str | None
    magic: str | None
    #: the task's default model, given a `RuntimeConfig` (config.py reads the registry: not imported here)
    default_model: Callable[[Any], str]
    methods: tuple[str, ...] = ()  # functions of `runtime` taking the runtime first: rt.NAME(...)
    upstream: str | None = None

    def serves(self, spec: "ModelSpec") -> bool:
        return (spec.format, spec.task) in self.models or ("*", spec.task) in self.models

    def runtime_part(self) -> ModuleType:
        return importlib.import_module(self.runtime)


def _embedding_default(config) -> str:
    return config.default_embedding_model


TASKS: dict[str, TaskParts] = {parts.name: parts for parts in (
    TaskParts("generate", "generate text", frozenset({("gguf", "generate"), ("transformers", "generate")}),
              "universal_kernel.tasks.generate", "universal_kernel.server_ext.serving",
              "universal_kernel.magics.generate", lambda config: config.default_generation_model),
    TaskParts("embed", "embed", frozenset({("*", "embed")}),
              "universal_kernel.tasks.embed", "universal_kernel.server_ext.serving",
              "universal_kernel.magics.embed", _embedding_default, methods=("embed", "aembed")),
    TaskParts("rerank", "rerank documents", frozenset({("*", "embed"), ("transformers", "rerank")}),
              "universal_kernel.tasks.rerank", "universal_kernel.server_ext.tasks.rerank",
              "universal_kernel.magics.rerank", _embedding_default,
              methods=("rerank",),
              upstream="universal_kernel.server_ext.tasks.rerank_upstream"),
    TaskParts("classify", "classify", frozenset({("*", "embed"), ("*", "generate"), ("transformers", "classify"),
                                                 ("spacy", "classify")}),
              "universal_kernel.tasks.classify", "universal_kernel.server_ext.tasks.classify",
              "universal_kernel.magics.classify", _embedding_default,
              methods=("classify",),
              upstream="universal_kernel.server_ext.tasks.classify_upstream"),
    TaskParts("ner", "find entities", frozenset({("spacy", "ner"), ("transformers", "ner")}),
              "universal_kernel.tasks.ner", "universal_kernel.server_ext.tasks.ner",
              "universal_kernel.magics.ner", lambda config: "en-core-web-sm",
              methods=("ner",),
              upstream="universal_kernel.server_ext.tasks.ner_upstream"),
    TaskParts("ocr", "read text from images", frozenset({("rapidocr", "ocr")}),
              "universal_kernel.tasks.ocr", "universal_kernel.server_ext.tasks.ocr",
              "universal_kernel.magics.ocr", lambda config: "rapidocr",
              methods=("ocr",),
              upstream="universal_kernel.server_ext.tasks.ocr_upstream"),
    # an OCR model reads scanned pages; the layout model goes with it (tasks/document.py)
    TaskParts("document", "read documents", frozenset({("rapidocr", "ocr")}),
              "universal_kernel.tasks.document", "universal_kernel.server_ext.tasks.document",
              "universal_kernel.magics.document", lambda config: "rapidocr",
              methods=("document",)),
    # numeric data needs no model; texts are scored over the vectors of an embedding model
    TaskParts("anomaly", "score anomalies of texts", frozenset({("*", "embed")}),
              "universal_kernel.tasks.anomaly_calls", "universal_kernel.server_ext.tasks.anomaly",
              "universal_kernel.magics.anomaly", _embedding_default,
              methods=("anomaly_fit", "anomaly_score", "anomaly_models", "anomaly_delete"),
              upstream="universal_kernel.server_ext.tasks.anomaly_upstream"),
)}

_KINDS = {"generate": "a generation", "embed": "an embedding", "classify": "a classifier",
          "rerank": "a cross-encoder", "ner": "an entity-recognition", "ocr": "an OCR"}


def task_settings() -> list:
    """Every task's own settings (the `SETTINGS` of its runtime module), in registry order: RuntimeConfig
    takes them as keywords, the server and the magics as traits where they declare it (config.py)."""
    found: dict = {}
    for parts in TASKS.values():
        for setting in getattr(parts.runtime_part(), "SETTINGS", ()):
            found.setdefault(id(setting), setting)
    return list(found.values())


def task_parts(task: str) -> TaskParts:
    try:
        return TASKS[task]
    except KeyError:
        raise InvalidRequest(f"unknown task {task!r}; one of {', '.join(TASKS)}", param="task") from None


def tasks_of(spec: "ModelSpec") -> list[str]:
    """Every task this model serves, its own first."""
    found = [name for name, parts in TASKS.items() if parts.serves(spec)]
    return sorted(found, key=lambda name: name != spec.task)


def require(task: str, spec: "ModelSpec") -> None:
    """WrongTask unless the model serves the task (checked before anything loads)."""
    parts = task_parts(task)
    if not parts.serves(spec):
        raise WrongTask(f"{spec.id!r} is {_KINDS.get(spec.task, 'a ' + spec.task)} model "
                        f"({', '.join(tasks_of(spec)) or 'no task'}); it cannot {parts.verb}")


@dataclass
class TaskCall:
    """One request of a task, its inputs checked, not yet sent: any runtime can run it (`runtime.run`)."""

    task: str
    model: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    keep_alive: float | None = None
    #: load options of the model that serves it (a different value loads a separate instance)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def part(self) -> ModuleType:
        return task_parts(self.task).runtime_part()


def texts_input(texts, param: str = "input") -> list[str]:
    """One string or a list of strings, as a list; InvalidRequest naming `param` otherwise."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, tuple):
        texts = list(texts)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(f"{param} must be a string or a list of strings", param=param)
    return texts


def check_lengths(instance, texts: list[str], truncate: bool, param: str = "input") -> None:
    """InvalidRequest naming the first text over the model's token limit, unless truncating."""
    limit = getattr(instance, "max_input_tokens", None)
    if truncate or not limit:
        return
    counts = instance.token_counts(texts) if hasattr(instance, "token_counts") else map(instance.count_tokens, texts)
    for i, n in enumerate(counts):
        if n > limit:
            raise InvalidRequest(f"{param}[{i}] has {n} tokens; {instance.spec.id!r} takes at most {limit} "
                                 f"(ask for truncation: truncate=true, --truncate)", param=param)
