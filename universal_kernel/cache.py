"""The model cache: what is loaded, for how long, and within which memory budget.

Keyed by resolved model, backend and load options. `keep_alive` follows Ollama: seconds to stay
loaded after the last use; 0 unloads after the request; negative keeps the model forever. The idle
timer runs only while no request holds the model, so nothing is unloaded mid-generation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .devices import process_rss, release_memory
from .errors import LoadFailed, MemoryBudgetExceeded, RuntimeFailure
from .references import ModelSpec
from .scheduler import ModelWorker, Request
from .stats import RollingFigures


def estimate_footprint(spec: ModelSpec, backend: str) -> int:
    """Bytes a model will take once loaded, from its files: what the budget is checked against."""
    if spec.format == "gguf" and backend == "transformers":
        bits = {2: 4.5, 3: 5.0, 7: 8.5, 8: 8.5, 1: 16.0, 0: 32.0}.get(spec.metadata.get("general.file_type"), 5.0)
        return int(spec.size_bytes * 32 / bits)  # dequantised to fp32
    return spec.size_bytes


@dataclass(eq=False)
class LoadedModel:
    key: tuple
    spec: ModelSpec
    backend_name: str
    backend: object
    worker: ModelWorker
    keep_alive: float
    estimate_bytes: int
    measured_bytes: int
    load_s: float
    loaded_at: float  # wall clock
    last_used: float  # cache clock
    active: int = 0
    unload_when_idle: bool = False
    figures: RollingFigures = field(default_factory=RollingFigures)

    def expires_at(self) -> float | None:
        if self.active or self.keep_alive < 0:
            return None
        return self.last_used + self.keep_alive


class ModelCache:
    def __init__(self, *, load: Callable[[ModelSpec, str, dict], object], memory_budget: int | None,
                 queue_length: int, clock: Callable[[], float] = time.monotonic, reaper: bool = True):
        self._load = load
        self.memory_budget = memory_budget
        self.queue_length = queue_length
        self.clock = clock
        self._lock = threading.RLock()
        self._entries: dict[tuple, LoadedModel] = {}
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._reserved = 0
        self.loads = 0  # real loads, for tests and status
        self.evictions = 0
        self._wake = threading.Condition(self._lock)
        self._closed = False
        if reaper:
            threading.Thread(target=self._reap, name="universal-kernel:reaper", daemon=True).start()

    # Lookup ---------------------------------------------------------------------------------
    @staticmethod
    def make_key(spec: ModelSpec, backend: str, options: dict) -> tuple:
        return (spec.key, backend, tuple(sorted(options.items())))

    def entries(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._entries.values())

    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.estimate_bytes for e in self._entries.values()) + self._reserved

    # Acquire / release ----------------------------------------------------------------------
    def acquire(self, spec: ModelSpec, backend: str, options: dict, keep_alive: float | None,
                default_keep_alive: float = 300.0) -> tuple[LoadedModel, float]:
        """Return the loaded model (loading it if needed) held for one request, and the load time."""
        key = self.make_key(spec, backend, options)
        entry = self._hold(key, keep_alive)
        if entry is not None:
            return entry, 0.0
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for one model load it once; other models don't wait
            entry = self._hold(key, keep_alive)
            if entry is not None:
                return entry, 0.0
            estimate = estimate_footprint(spec, backend)
            self._make_room(estimate, spec)
            try:
                started, rss_before = time.perf_counter(), process_rss()
                try:
                    instance = self._load(spec, backend, options)
                except RuntimeFailure:
                    raise
                except Exception as exc:
                    raise LoadFailed(f"loading {spec.id!r} failed: {type(exc).__name__}: {exc}") from None
                load_s = time.perf_counter() - started
                measured = max(0, process_rss() - rss_before)
            except BaseException:
                with self._lock:
                    self._reserved -= estimate
                release_memory()
                raise
            with self._lock:
                self._reserved -= estimate
                entry = LoadedModel(
                    key=key, spec=spec, backend_name=backend, backend=instance,
                    keep_alive=default_keep_alive if keep_alive is None else keep_alive,
                    worker=None, estimate_bytes=estimate, measured_bytes=measured, load_s=load_s,
                    loaded_at=time.time(), last_used=self.clock(), active=1,
                )
                entry.worker = ModelWorker(spec.id, instance, queue_length=self.queue_length,
                                           on_done=lambda request, e=entry: self.release(e, request))
                self._entries[key] = entry
                self.loads += 1
            return entry, load_s

    def _hold(self, key: tuple, keep_alive: float | None) -> LoadedModel | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.active += 1
                entry.unload_when_idle = False
                if keep_alive is not None:
                    entry.keep_alive = keep_alive
            return entry

    def release(self, entry: LoadedModel, request: Request | None = None) -> None:
        """A request is done with the model: restart its idle timer, unload now if keep_alive is 0."""
        if request is not None:
            entry.figures.add(request.stats)
        with self._lock:
            entry.active -= 1
            entry.last_used = self.clock()
            unload = entry.active == 0 and (entry.keep_alive == 0 or entry.unload_when_idle)
            if unload:
                self._entries.pop(entry.key, None)
            self._wake.notify_all()
        if unload:
            self._close(entry)

    # Unload ---------------------------------------------------------------------------------
    def unload(self, key: tuple) -> str:
        """Unload now if idle; otherwise once its requests finish. Returns "unloaded" or "scheduled"."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return "not-loaded"
            if entry.active:
                entry.unload_when_idle = True
                return "scheduled"
            self._entries.pop(key)
        self._close(entry)
        return "unloaded"

    def unload_all(self) -> None:
        for entry in self.entries():
            self.unload(entry.key)

    def _close(self, entry: LoadedModel) -> None:
        entry.worker.stop()
        try:
            entry.backend.close()
        finally:
            entry.backend = None
            entry.worker.backend = None
            release_memory()

    def sweep(self) -> list[LoadedModel]:
        """Unload every idle model whose keep_alive has passed; return them."""
        now = self.clock()
        with self._lock:
            expired = [e for e in self._entries.values() if (t := e.expires_at()) is not None and t <= now]
            for entry in expired:
                self._entries.pop(entry.key)
        for entry in expired:
            self._close(entry)
        return expired

    def _make_room(self, needed: int, spec: ModelSpec) -> None:
        if self.memory_budget is None:
            with self._lock:
                self._reserved += needed
            return
        evicted = []
        with self._lock:
            if needed > self.memory_budget:
                raise MemoryBudgetExceeded(
                    f"{spec.id!r} needs about {needed / 2**20:.0f} MiB; the budget is "
                    f"{self.memory_budget / 2**20:.0f} MiB"
                )
            idle = sorted((e for e in self._entries.values() if not e.active), key=lambda e: e.last_used)
            used = self.used_bytes()
            while used + needed > self.memory_budget and idle:
                victim = idle.pop(0)
                self._entries.pop(victim.key)
                evicted.append(victim)
                used -= victim.estimate_bytes
            if used + needed > self.memory_budget:
                for victim in evicted:  # put back what we took: a failed load harms nothing
                    self._entries[victim.key] = victim
                raise MemoryBudgetExceeded(
                    f"{spec.id!r} needs about {needed / 2**20:.0f} MiB; {used / 2**20:.0f} MiB of the "
                    f"{self.memory_budget / 2**20:.0f} MiB budget is held by models in use"
                )
            self._reserved += needed
            self.evictions += len(evicted)
        for victim in evicted:
            self._close(victim)

    # Idle timer -----------------------------------------------------------------------------
    def _reap(self) -> None:
        while not self._closed:
            with self._lock:
                deadlines = [t for e in self._entries.values() if (t := e.expires_at()) is not None]
                wait = min(deadlines) - self.clock() if deadlines else 60.0
                if wait > 0:
                    self._wake.wait(timeout=min(wait, 60.0))
            self.sweep()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._wake.notify_all()
        self.unload_all()
