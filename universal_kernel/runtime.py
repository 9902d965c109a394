"""The local runtime: one object that resolves, loads, schedules and measures models in this process.

It implements `InferenceRuntime` (interface.py). What is particular to a task (checking its inputs,
the work a model's worker runs, its methods such as `rt.rerank`) lives in that task's module
(`universal_kernel/tasks/`, offered through task_methods.py); this module keeps what all tasks share:
references, the cache, scheduling, status.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .backends import (
    GenerationParams, choose_backend, context_bytes, create_backend, import_library, precision_status,
    prompt_reuse_status,
)
from .cache import LoadedModel, ModelCache
from .config import RuntimeConfig
from .devices import memory_report
from .memory_trend import RssTrend, tracemalloc_dumps_from_env
from .errors import InvalidRequest, ModelNotFound
from .interface import Capabilities, FileAccess, ModelStatus, RuntimeStatus, UnloadResult
from .references import ModelSpec, Resolver
from .scheduler import Request
from .stats import RequestStats
from .streams import AsyncGenerationStream, Completion, GenerationStream, WorkerWait, async_sink, result_of
from .task_methods import TaskMethods
from .tasks import TaskCall, require, task_parts, tasks_of
from .tasks.embed import EmbeddingCache
from .tasks.generate import check_messages


@dataclass
class TaskContext:
    """What a task's work needs beyond its inputs: the runtime (its caches), the model, the request's stats."""

    runtime: "Runtime"
    spec: ModelSpec
    entry: LoadedModel
    stats: RequestStats
    inputs: dict


def _open_embedding_store(config: RuntimeConfig):
    """The embedding cache on disk, or None (turned off, or its folder cannot be used: said once)."""
    from .tasks.embedding_store import open_store

    try:
        return open_store(config.embedding_cache_folder, config.embedding_cache_bytes)
    except Exception as exc:  # noqa: BLE001 - a cache must never stop the runtime
        import warnings

        warnings.warn(f"the embedding cache in {config.embedding_cache_folder} cannot be used "
                      f"({type(exc).__name__}: {exc}); embeddings are kept in memory only", RuntimeWarning)
        return None


class Runtime(TaskMethods):
    """The in-process runtime (`InferenceRuntime`); the tasks' methods (`rt.rerank(...)`) come from the
    task registry (task_methods.py)."""

    where = "local"
    capabilities = Capabilities()  # every option: the work runs here

    def __init__(self, config: RuntimeConfig | None = None, *, clock: Callable[[], float] = time.monotonic,
                 reaper: bool = True):
        self.config = config or RuntimeConfig()
        self.resolver = Resolver(self.config.model_folders, self.config.aliases, self.config.allow_downloads)
        self.resolver.memory_budget = self.config.memory_budget  # a pull on first use is refused past it
        self.cache = ModelCache(
            load=lambda spec, backend, options: create_backend(spec, backend, self.config, options),
            memory_budget=self.config.memory_budget,
            queue_length=self.config.queue_length,
            clock=clock,
            reaper=reaper,
            prepare=lambda backend: import_library(backend, self.config.device),
            finished=lambda stats: self._notify("finished", stats),
            context_bytes=lambda spec, backend, options: context_bytes(spec, backend, self.config, options),
        )
        self.embedding_cache = EmbeddingCache()
        self.embedding_store = _open_embedding_store(self.config)
        self.recent: deque[RequestStats] = deque(maxlen=200)
        self.rss_trend = RssTrend()  # the process RSS over the last minutes (status, the monitor)
        tracemalloc_dumps_from_env()  # soaks only: Python allocations snapshotted on SIGUSR1
        self._listeners: list[Callable[[str, Any], None]] = []

    @property
    def default_generation_model(self) -> str:
        return self.config.default_generation_model

    @property
    def default_embedding_model(self) -> str:
        return self.config.default_embedding_model

    # References -----------------------------------------------------------------------------
    def resolve(self, ref: str) -> ModelSpec:
        return self.resolver.resolve(ref)

    def alias(self, name: str, ref: str) -> ModelSpec:
        return self.resolver.add_alias(name, ref)

    def pull(self, ref: str, *, progress: Callable | None = None, allow_pickle: bool = False):
        """Fetch the files the Hub id `ref` needs into the HF cache (`hub_pull.pull`); a `PullResult`.
        An explicit pull is the user's own request: it does not need `allow_downloads`."""
        from .hub_pull import pull

        return pull(ref, progress=progress, allow_pickle=allow_pickle, max_bytes=self.config.memory_budget)

    def remove_pulled(self, ref: str) -> list[str]:
        """Delete a pulled model from the HF cache (huggingface_hub's cache API); the revisions removed."""
        from .hub_pull import remove

        return remove(ref)

    def models(self) -> list[dict]:
        """Every servable model: aliases that resolve, models in the top of the model folders, loaded ones."""
        found: dict[str, dict] = {}
        for name in self.resolver.names():
            try:
                found[name] = self._describe(self.resolver.resolve(name))
            except Exception:
                continue
        for folder in self.resolver.model_folders:
            for path in sorted(folder.glob("*")) if folder.is_dir() else []:
                if path.suffix.lower() == ".gguf" or (path.is_dir() and (path / "config.json").exists()):
                    name = path.name
                    if name not in found:
                        try:
                            found[name] = self._describe(self.resolver.resolve(name))
                        except Exception:
                            continue
        from .hub_pull import pulled

        for result in pulled():  # models pulled by Hub id into the HF cache
            if result.ref not in found:
                try:
                    found[result.ref] = {**self._describe(self.resolver.resolve(result.ref)),
                                         "hub": {"repo": result.repo_id, "quant": result.quant,
                                                 "revision": result.revision}}
                except Exception:
                    continue
        for entry in self.cache.entries():
            found.setdefault(entry.spec.id, self._describe(entry.spec))
        return list(found.values())

    def _describe(self, spec: ModelSpec) -> dict:
        loaded = [e for e in self.cache.entries() if e.spec.key == spec.key]  # the same file, unchanged
        return {
            "id": spec.id, "path": str(spec.path), "format": spec.format, "task": spec.task, "tasks": tasks_of(spec),
            "architecture": spec.architecture, "size_bytes": spec.size_bytes,
            "loaded": bool(loaded), "backends": [e.backend_name for e in loaded],
        }

    # Loading --------------------------------------------------------------------------------
    def _acquire(self, model: str | None, backend: str, task: str, keep_alive: float | None,
                 options: dict | None = None, check: Callable[[ModelSpec], None] | None = None,
                 ) -> tuple[ModelSpec, LoadedModel, float]:
        parts = task_parts(task)
        if model is None:
            model = parts.default_model(self.config)
        try:
            spec = self.resolve(model)
        except ModelNotFound:
            self.cache.drop_missing()  # a file removed under a loaded model: its entry goes too
            raise
        require(task, spec)
        if check is not None:
            check(spec)  # the task's own checks against the model, before anything loads
        backend = choose_backend(spec, backend)
        # No keep_alive keeps a loaded model's current one; a new load takes the configured default.
        keep = None if keep_alive is None else float(keep_alive)
        entry, load_s = self.cache.acquire(spec, backend, dict(options or {}), keep, self.config.keep_alive)
        if load_s:
            self._notify("loaded", entry)
        return spec, entry, load_s

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, pin: bool = False, **options) -> ModelStatus:
        """Load a model ahead of use; returns its status entry. `pin` keeps it loaded until a keep_alive
        is given for it (the server's preloads): the default keep_alive does not unload it."""
        spec = self.resolve(self.config.default_generation_model if model is None else model)
        task = task or (spec.task if spec.task in ("generate", "embed") else tasks_of(spec)[0])
        _, entry, _ = self._acquire(spec.id, backend, task, -1 if pin else keep_alive, options)
        if pin:
            self.cache.pin(entry)
        self.cache.release(entry)
        return self._entry_status(entry)

    def unload(self, model: str | None = None, *, backend: str | None = None) -> UnloadResult:
        """Unload every loaded instance of `model` (all models when None); says what happened to each."""
        spec = self.resolve(model) if model else None
        results = []
        for entry in self.cache.entries():
            if (spec is None or entry.spec.path == spec.path) and (backend in (None, "auto", entry.backend_name)):
                results.append(self.cache.unload(entry.key))
                self._notify("unloaded", entry)
        return {"model": model, "results": results}

    def file_access(self, task: str) -> FileAccess:
        """Paths inside the data folders; this runtime's settings hold the input limits it applies."""
        return FileAccess(lambda path, param: self.resolver.check_path(path, param, inside=self.config.data_folders),
                          self.config)

    # Generation -----------------------------------------------------------------------------
    def _generation(self, model, prompt, messages, params, backend, keep_alive, sink) -> tuple[Request, LoadedModel]:
        if (prompt is None) == (messages is None):
            raise InvalidRequest("give either a prompt or messages")
        if messages is not None:
            messages = check_messages(messages)
        elif not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string", param="prompt")
        params = params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
        call = TaskCall("generate", model, {"prompt": prompt, "messages": messages, "params": params}, backend,
                        keep_alive)
        return self._submit(call, sink)

    def stream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
               params: GenerationParams | dict | None = None, backend: str = "auto",
               keep_alive: float | None = None) -> GenerationStream:
        """Start a generation; iterate the result for text pieces. Closing it cancels."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        request, entry = self._generation(model, prompt, messages, params, backend, keep_alive, inbox.put)
        return GenerationStream(request, inbox, entry.worker, entry.spec.id, self.config.stream_poll_s)

    def generate(self, model: str | None = None, **kwargs) -> Completion:
        """The whole text at once: the same path as `stream`, read to the end."""
        with self.stream(model, **kwargs) as stream:
            return stream.result()

    async def astream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
                      params: GenerationParams | dict | None = None, backend: str = "auto",
                      keep_alive: float | None = None) -> AsyncGenerationStream:
        """The async form of `stream`, with the same keywords: resolving and loading run off the event loop."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        sink = async_sink(loop, inbox)
        request, entry = await loop.run_in_executor(
            None, lambda: self._generation(model, prompt, messages, params, backend, keep_alive, sink))
        return AsyncGenerationStream(request, inbox, entry.worker, entry.spec.id, self.config.stream_poll_s)

    # Any task -------------------------------------------------------------------------------
    def _submit(self, call: TaskCall, sink) -> tuple[Request, LoadedModel]:
        """Check the call against its model, load the model if needed and queue the task's work."""
        created = time.time()
        part = call.part
        check = (lambda spec: part.check(spec, call.inputs)) if hasattr(part, "check") else None
        spec, entry, load_s = self._acquire(call.model, call.backend, call.task, call.keep_alive, call.options,
                                            check=check)
        stats = RequestStats(model=spec.id, backend=entry.backend_name, kind=call.task, created_at=created,
                             load_s=load_s)
        try:
            work = part.work(TaskContext(self, spec, entry, stats, call.inputs))
            request = Request(work=work, sink=sink, stats=stats)
            entry.worker.submit(request)
        except BaseException:
            self.cache.release(entry)
            stats.finish_reason = "rejected"  # refused before it ran (the queue was full, say)
            self._notify("finished", stats)
            raise
        self.recent.append(stats)
        return request, entry

    def _answer_without_model(self, call: TaskCall):
        """The result of a call its task answers in this process without a model's worker (an embed call
        whose rows are all cached, any anomaly call), counted as any request when it has figures; or None."""
        answer = getattr(call.part, "answer_without_model", None)
        result = answer(self, call) if answer is not None else None
        stats = getattr(result, "stats", None)
        if stats is not None:
            self.recent.append(stats)
            self._notify("finished", stats)
        return result

    def _waiting(self, request: Request, entry: LoadedModel) -> WorkerWait:
        return WorkerWait(request, entry.worker, entry.spec.id, self.config.stream_poll_s)

    def run(self, call: TaskCall):
        """Run one task call to its result (the typed result of its task)."""
        answered = self._answer_without_model(call)
        if answered is not None:
            return answered
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        request, entry = self._submit(call, inbox.put)
        return result_of(self._waiting(request, entry).next(inbox))

    async def arun(self, call: TaskCall):
        """`run` for the event loop: loading runs off the loop, the result is awaited."""
        loop = asyncio.get_running_loop()
        if hasattr(call.part, "answer_without_model"):
            answered = await loop.run_in_executor(None, self._answer_without_model, call)
            if answered is not None:
                return answered
        inbox: asyncio.Queue = asyncio.Queue()
        request, entry = await loop.run_in_executor(None, lambda: self._submit(call, async_sink(loop, inbox)))
        return result_of(await self._waiting(request, entry).anext(inbox))

    # Status ---------------------------------------------------------------------------------
    def _entry_status(self, entry: LoadedModel) -> ModelStatus:
        from .hub_pull import source_of as _source_of

        expires = entry.expires_at()
        return {
            "id": entry.spec.id,
            "path": str(entry.spec.path),
            "source": _source_of(entry.spec.path),  # hub:org/repo@commit for a pulled model, else file
            "backend": entry.backend_name,
            # what serves it: an "onnx" load that ONNX Runtime refused runs on torch (precision_reason says why)
            "engine": getattr(entry.backend, "name", entry.backend_name),
            "device": getattr(entry.backend, "device", "cpu"),
            **precision_status(entry),
            "task": entry.spec.task,
            "tasks": tasks_of(entry.spec),
            "format": entry.spec.format,
            "options": dict(entry.key[2]),
            "size_bytes": entry.spec.size_bytes,  # the weights on disk
            "estimate_bytes": entry.estimate_bytes,  # what the budget expected before the load
            "measured_bytes": entry.measured_bytes,  # RSS (+ GPU memory) the load added
            "footprint_bytes": entry.footprint_bytes,  # what the budget counts
            "budget_fraction": (entry.footprint_bytes / self.cache.memory_budget
                                if self.cache.memory_budget else None),
            "load_s": entry.load_s,
            "loaded_at": entry.loaded_at,
            "keep_alive": entry.keep_alive,
            "pinned": entry.pinned,
            "expires_in_s": None if expires is None else max(0.0, expires - self.cache.clock()),
            "active": entry.active,
            "queue_depth": entry.worker.queue_depth,
            "running": entry.worker.running is not None,
            "sequences": len(entry.worker.active),  # requests running now (generations decoded together)
            "parallel": entry.worker.slots,  # how many may run at once
            **prompt_reuse_status(entry),
            "figures": entry.figures.summary(),
        }

    def budget_status(self) -> dict:
        """The memory budget, the bytes counted against it and each loaded model's share."""
        budget, entries = self.cache.memory_budget, self.cache.entries()
        used = self.cache.used_bytes()
        return {
            "budget_bytes": budget,
            "used_bytes": used,
            "measured_bytes": sum(e.measured_bytes for e in entries),
            "loading_bytes": self.cache.loading_bytes(),
            "free_bytes": None if budget is None else budget - used,
            "models": [{"id": e.spec.id, "backend": e.backend_name, "size_bytes": e.spec.size_bytes,
                        "measured_bytes": e.measured_bytes, "footprint_bytes": e.footprint_bytes,
                        "fraction": e.footprint_bytes / budget if budget else None, "active": e.active}
                       for e in entries],
        }

    def status(self) -> RuntimeStatus:
        return {
            "models": [self._entry_status(e) for e in self.cache.entries()],
            "memory": memory_report(),
            "budget": self.budget_status(),
            "budget_bytes": self.cache.memory_budget,
            "used_bytes": self.cache.used_bytes(),
            "loads": self.cache.loads,
            "evictions": self.cache.evictions,
            "worker_failures": self.cache.failure_records(),  # models whose worker died, and their reloads
            "memory_trend": self.rss_trend.summary(),
            "recent": [s.as_dict() for s in list(self.recent)[-20:]],
        }

    # Listeners (widgets) ---------------------------------------------------------------------
    def subscribe(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    def _notify(self, event: str, payload: Any) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, payload)
            except Exception:
                pass

    def close(self) -> None:
        self.rss_trend.close()
        self.cache.close()


_default: Runtime | None = None
_default_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime that the magics use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default
