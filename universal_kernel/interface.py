"""What every runtime offers, whoever runs the work: this process, a Jupyter server over HTTP, a cluster.

The magics, the monitor, the server and the benchmarks program against `InferenceRuntime` only. A
runtime says where its work runs (`where`) and which options it honours (`capabilities`), so a front
door never asks which class it holds. A task's typed result lives in the task's module
(`universal_kernel/tasks/`); the results of `load`, `unload` and `status` are typed dicts, the same
locally and over HTTP (they travel as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Protocol, TypedDict, runtime_checkable

from .backends.base import GenerationParams
from .stats import RequestStats
from .streams import Completion

#: where a runtime's work runs: this process, a server reached over HTTP, or the workers of a cluster
Where = Literal["local", "server", "dask"]


# What a runtime honours --------------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """The options a runtime honours; a front door asks these, never `where`, before it offers one."""

    embed_cache: bool = True  # embed(cache=False): every row computed, the embedding caches untouched
    embed_precision: bool = True  # embed(precision="fp32"): the weights' precision chosen per call
    load_options: bool = True  # load(task=..., n_ctx=...): a task and backend options at load time
    aliases: bool = True  # alias(name, ref)
    pull: bool = True  # pull(ref) and remove_pulled(ref): models fetched from the Hugging Face Hub


@dataclass(frozen=True)
class FileAccess:
    """How a runtime reads the inputs a caller names by path, and whose input limits apply.

    `path_check(path, param)` finds a path's file or refuses it. `settings` holds the limits this side
    applies before anything is sent or loaded (a task reads its own: tasks/ocr.py); None when the far
    side applies its own (a server checks what it receives)."""

    path_check: Callable[[Any, str], Path]
    settings: Any | None = None


# Status ---------------------------------------------------------------------------------------
class ModelStatus(TypedDict, total=False):
    """One loaded model (`load`'s answer, and each of `status()["models"]`)."""

    id: str
    path: str
    source: str  # hub:org/repo@commit for a pulled model, else file
    backend: str
    engine: str  # what serves it (an "onnx" load that ONNX Runtime refused runs on torch)
    device: str
    precision: str | None  # "fp32", "bf16", "fp16"; None where the files decide (GGUF, spaCy, ONNX)
    precision_reason: str | None
    task: str
    tasks: list[str]
    format: str
    options: dict  # its load options
    size_bytes: int
    estimate_bytes: int
    measured_bytes: int
    footprint_bytes: int
    budget_fraction: float | None
    load_s: float
    loaded_at: float
    keep_alive: float
    pinned: bool
    expires_in_s: float | None
    active: int
    queue_depth: int  # requests waiting plus those running
    running: bool
    sequences: int  # requests running now (a llama.cpp model decodes up to `parallel` generations together)
    parallel: int
    prompt_reuse: str  # batching backends only
    figures: dict


class RuntimeStatus(TypedDict, total=False):
    models: list[ModelStatus]
    memory: dict
    budget: dict
    recent: list[dict]
    loads: int
    evictions: int
    worker_failures: list[dict]  # models whose worker died: when, of what, and their reload
    memory_trend: dict  # the process RSS over the last minutes (memory_trend.py)
    # a server without runtime API: no models or memory, the requests its client measured, and why
    where: str
    url: str
    runtime_api: bool
    note: str


class UnloadResult(TypedDict):
    """What `unload` did (the body of `POST universal/api/unload`)."""

    model: str | None  # None: every loaded model
    results: list[str]  # per instance: "unloaded", or "scheduled" (it unloads when its requests finish)


# The interface ------------------------------------------------------------------------------
class TextStream(Protocol):
    """A generation in progress: iterate for text pieces; closing it cancels; `result()` reads to the end."""

    model: str
    stats: RequestStats

    @property
    def text(self) -> str: ...

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...

    def result(self) -> Completion: ...


class AsyncTextStream(Protocol):
    """`TextStream` for the event loop (the server's)."""

    model: str
    stats: RequestStats

    def __aiter__(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...

    async def result(self) -> Completion: ...


@runtime_checkable
class InferenceRuntime(Protocol):
    """What the local runtime, the HTTP client of a server and a cluster's runtime all offer.

    Every task runs through `run`/`arun` (a `tasks.TaskCall`); the per-task methods (`rt.rerank(...)`,
    `rt.anomaly_fit(...)`) are generated from the task registry (task_methods.py) and call `run`."""

    #: where the work runs; front doors show it (never the class name)
    where: Where
    #: the options it honours; front doors choose by these
    capabilities: Capabilities
    default_generation_model: str
    default_embedding_model: str

    # any task
    def run(self, call: Any) -> Any: ...

    async def arun(self, call: Any) -> Any: ...

    def file_access(self, task: str) -> FileAccess: ...

    # generation and embeddings
    def stream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
               params: GenerationParams | dict | None = None, backend: str = "auto",
               keep_alive: float | None = None) -> TextStream: ...

    async def astream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
                      params: GenerationParams | dict | None = None, backend: str = "auto",
                      keep_alive: float | None = None) -> AsyncTextStream: ...

    def generate(self, model: str | None = None, **kwargs: Any) -> Completion: ...

    def embed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
              backend: str = "auto", keep_alive: float | None = None, cache: bool = True,
              precision: str = "auto") -> Any: ...

    async def aembed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
                     backend: str = "auto", keep_alive: float | None = None) -> Any: ...

    # models and status
    def status(self) -> RuntimeStatus: ...

    def models(self) -> list[dict]: ...

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, **options: Any) -> ModelStatus: ...

    def unload(self, model: str | None = None, *, backend: str | None = None) -> UnloadResult: ...

    def alias(self, name: str, ref: str) -> Any: ...

    def subscribe(self, listener: Callable[[str, Any], None]) -> None: ...


def __getattr__(name: str):
    """A task's result type under its old address (`from universal_kernel.interface import RerankResult`):
    found in the registry's task modules, where it lives now."""
    if name.startswith("_"):
        raise AttributeError(name)
    from .tasks import TASKS

    for parts in TASKS.values():
        found = getattr(parts.runtime_part(), name, None)
        if isinstance(found, type):
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
