"""The runtime: one object that resolves, loads, schedules and measures models.

Front doors (magics, the server extension, widgets) use only this module's `Runtime`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .backends import GenerationParams, choose_backend, create_backend
from .cache import LoadedModel, ModelCache
from .config import RuntimeConfig
from .devices import memory_report
from .errors import GenerationFailed, InvalidRequest, ModelNotFound, WrongTask
from .references import ModelSpec, Resolver
from .scheduler import Request
from .stats import RequestStats
from .streams import AsyncGenerationStream, Completion, GenerationStream, async_sink


@dataclass
class EmbeddingResult:
    model: str
    vectors: np.ndarray  # float32, one row per input, in input order
    prompt_tokens: int
    stats: RequestStats


class EmbeddingCache:
    """Vectors of texts already embedded, per model and normalisation, least recently used out first."""

    def __init__(self, max_rows: int = 200_000):
        self.max_rows = max_rows
        self._rows: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, scope: tuple, text: str):
        with self._lock:
            hit = self._rows.get((scope, text))
            if hit is not None:
                self._rows.move_to_end((scope, text))
            return hit

    def put(self, scope: tuple, text: str, vector: np.ndarray, tokens: int) -> None:
        with self._lock:
            self._rows[(scope, text)] = (vector, tokens)
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)


def _messages(messages: list[dict]) -> list[dict]:
    """Check chat messages and flatten text parts into plain strings."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    flat = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise InvalidRequest(f"messages[{i}] needs a role of system, user or assistant", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidRequest(f"messages[{i}]: only text content parts are supported", param="messages")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts",
                                 param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        flat.append({"role": role, "content": content})
    return flat


def _import_backend_library(backend: str, device: str = "auto") -> None:
    """Import a backend's library (and start CUDA for a GPU load) before its first load is measured:
    one-time costs of the process (about 200 MB of RSS for torch and transformers, a few hundred MB of
    GPU memory for a CUDA context), not the footprint of the model being loaded."""
    try:
        if backend == "llama_cpp":
            import llama_cpp  # noqa: F401
        else:
            import torch
            import transformers  # noqa: F401

            from .devices import pick_device

            chosen = pick_device(device)
            if chosen.kind == "cuda":
                torch.zeros(1, device=chosen.torch_name)  # creates the context once; a no-op later
    except Exception:
        pass  # the load itself reports a missing library or device


class Runtime:
    def __init__(self, config: RuntimeConfig | None = None, *, clock: Callable[[], float] = time.monotonic,
                 reaper: bool = True):
        self.config = config or RuntimeConfig()
        self.resolver = Resolver(self.config.model_folders, self.config.aliases, self.config.allow_downloads)
        self.cache = ModelCache(
            load=lambda spec, backend, options: create_backend(spec, backend, self.config, options),
            memory_budget=self.config.memory_budget,
            queue_length=self.config.queue_length,
            clock=clock,
            reaper=reaper,
            prepare=lambda backend: _import_backend_library(backend, self.config.device),
        )
        self.embedding_cache = EmbeddingCache()
        self.recent: deque[RequestStats] = deque(maxlen=200)
        self._listeners: list[Callable[[str, Any], None]] = []

    # References -----------------------------------------------------------------------------
    def resolve(self, ref: str) -> ModelSpec:
        return self.resolver.resolve(ref)

    def alias(self, name: str, ref: str) -> ModelSpec:
        return self.resolver.add_alias(name, ref)

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
        for entry in self.cache.entries():
            found.setdefault(entry.spec.id, self._describe(entry.spec))
        return list(found.values())

    def _describe(self, spec: ModelSpec) -> dict:
        loaded = [e for e in self.cache.entries() if e.spec.key == spec.key]  # the same file, unchanged
        return {
            "id": spec.id, "path": str(spec.path), "format": spec.format, "task": spec.task,
            "architecture": spec.architecture, "size_bytes": spec.size_bytes,
            "loaded": bool(loaded), "backends": [e.backend_name for e in loaded],
        }

    # Loading --------------------------------------------------------------------------------
    def _acquire(self, model: str | None, backend: str, task: str, keep_alive: float | None,
                 options: dict | None = None) -> tuple[ModelSpec, LoadedModel, float]:
        if model is None:
            model = self.config.default_generation_model if task == "generate" else self.config.default_embedding_model
        ref = model
        try:
            spec = self.resolve(ref)
        except ModelNotFound:
            self.cache.drop_missing()  # a file removed under a loaded model: its entry goes too
            raise
        if spec.task != task:
            verb = "generate text" if task == "generate" else "embed"
            raise WrongTask(f"{spec.id!r} is a{'n embedding' if spec.task == 'embed' else ' generation'} "
                            f"model; it cannot {verb}")
        backend = choose_backend(spec, backend)
        # No keep_alive keeps a loaded model's current one; a new load takes the configured default.
        keep = None if keep_alive is None else float(keep_alive)
        entry, load_s = self.cache.acquire(spec, backend, dict(options or {}), keep, self.config.keep_alive)
        if load_s:
            self._notify("loaded", entry)
        return spec, entry, load_s

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, **options) -> dict:
        """Load a model ahead of use; returns its status entry."""
        spec = self.resolve(self.config.default_generation_model if model is None else model)
        _, entry, _ = self._acquire(spec.id, backend, task or spec.task, keep_alive, options)
        self.cache.release(entry)
        return self._entry_status(entry)

    def unload(self, model: str | None = None, *, backend: str | None = None) -> list[str]:
        """Unload every loaded instance of `model` (all models when None); returns what happened to each."""
        spec = self.resolve(model) if model else None
        results = []
        for entry in self.cache.entries():
            if (spec is None or entry.spec.path == spec.path) and (backend in (None, "auto", entry.backend_name)):
                results.append(self.cache.unload(entry.key))
                self._notify("unloaded", entry)
        return results

    # Generation -----------------------------------------------------------------------------
    def _generation(self, model, prompt, messages, params, backend, keep_alive, sink) -> tuple[Request, LoadedModel]:
        if (prompt is None) == (messages is None):
            raise InvalidRequest("give either a prompt or messages")
        if messages is not None:
            messages = _messages(messages)
        elif not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string", param="prompt")
        params = params if isinstance(params, GenerationParams) else GenerationParams(**(params or {}))
        created = time.time()
        spec, entry, load_s = self._acquire(model, backend, "generate", keep_alive)
        stats = RequestStats(model=spec.id, backend=entry.backend_name, kind="generate", created_at=created,
                             load_s=load_s)

        def work(instance, emit, cancelled):
            return instance.generate(prompt, messages, params, emit, cancelled)

        request = Request(work=work, sink=sink, stats=stats)
        try:
            entry.worker.submit(request)
        except BaseException:
            self.cache.release(entry)
            raise
        self.recent.append(stats)
        return request, entry

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

    # Embedding ------------------------------------------------------------------------------
    def _embedding(self, model, texts, normalize, backend, keep_alive, sink) -> tuple[Request, LoadedModel]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("input must be a string or a list of strings", param="input")
        texts = list(texts)
        created = time.time()
        spec, entry, load_s = self._acquire(model, backend, "embed", keep_alive)
        stats = RequestStats(model=spec.id, backend=entry.backend_name, kind="embed", created_at=created,
                             load_s=load_s)
        scope = (entry.key, bool(normalize))
        cache = self.embedding_cache

        def work(instance, emit, cancelled):
            rows: list = [cache.get(scope, t) for t in texts]
            missing = list(dict.fromkeys(t for t, row in zip(texts, rows) if row is None))
            if missing:
                vectors, _ = instance.embed(missing, normalize)
                for text, vector in zip(missing, vectors):
                    cache.put(scope, text, vector, instance.count_tokens(text))
                rows = [cache.get(scope, t) for t in texts]
            stats.rows_computed, stats.rows_cached = len(missing), len(texts) - len(missing)
            dim = rows[0][0].shape[0] if rows else 0
            matrix = np.vstack([r[0] for r in rows]).astype(np.float32, copy=False) if rows else \
                np.zeros((0, dim), dtype=np.float32)
            stats.prompt_tokens = sum(r[1] for r in rows)
            return EmbeddingResult(spec.id, matrix, stats.prompt_tokens, stats)

        request = Request(work=work, sink=sink, stats=stats)
        try:
            entry.worker.submit(request)
        except BaseException:
            self.cache.release(entry)
            raise
        self.recent.append(stats)
        return request, entry

    def embed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
              backend: str = "auto", keep_alive: float | None = None) -> EmbeddingResult:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        request, entry = self._embedding(model, texts, normalize, backend, keep_alive, inbox.put)
        return self._wait(request, entry, lambda timeout: inbox.get(timeout=timeout))

    def _worker_check(self, request, entry) -> None:
        """A reader waiting on a worker that died without finishing the request must not wait forever."""
        if not entry.worker.thread.is_alive() and not request.finished.is_set():
            raise GenerationFailed(f"the worker of {entry.spec.id!r} stopped without finishing the request")

    def _wait(self, request, entry, get):
        while True:
            try:
                kind, value = get(self.config.stream_poll_s)
            except queue.Empty:
                self._worker_check(request, entry)
                continue
            except BaseException:
                request.cancel()
                raise
            if kind == "error":
                raise value
            return value

    async def aembed(self, texts, model: str | None = None, *, normalize: bool = True, backend: str = "auto",
                     keep_alive: float | None = None) -> EmbeddingResult:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        request, entry = await loop.run_in_executor(
            None, lambda: self._embedding(model, texts, normalize, backend, keep_alive, async_sink(loop, inbox)))
        try:
            while True:  # as `embed` and the streams: wait in slices, checking that the worker still lives
                try:
                    kind, value = await asyncio.wait_for(inbox.get(), timeout=max(self.config.stream_poll_s, 0.5))
                except asyncio.TimeoutError:
                    self._worker_check(request, entry)
                    continue
                break
        except BaseException:
            request.cancel()
            raise
        if kind == "error":
            raise value
        return value

    # Status ---------------------------------------------------------------------------------
    def _entry_status(self, entry: LoadedModel) -> dict:
        expires = entry.expires_at()
        return {
            "id": entry.spec.id,
            "path": str(entry.spec.path),
            "backend": entry.backend_name,
            "device": getattr(entry.backend, "device", "cpu"),
            "task": entry.spec.task,
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
            "expires_in_s": None if expires is None else max(0.0, expires - self.cache.clock()),
            "active": entry.active,
            "queue_depth": entry.worker.queue_depth,
            "running": entry.worker.running is not None,
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

    def status(self) -> dict:
        return {
            "models": [self._entry_status(e) for e in self.cache.entries()],
            "memory": memory_report(),
            "budget": self.budget_status(),
            "budget_bytes": self.cache.memory_budget,
            "used_bytes": self.cache.used_bytes(),
            "loads": self.cache.loads,
            "evictions": self.cache.evictions,
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
