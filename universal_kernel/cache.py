"""The model cache: what is loaded, for how long, and within which memory budget.

Keyed by resolved model, backend and load options. `keep_alive` follows Ollama: seconds to stay
loaded after the last use; 0 unloads after the request; negative keeps the model forever. The idle
timer runs only while no request holds the model, so nothing is unloaded mid-generation. A pinned model
(the server's preloads) stays loaded whatever the default keep_alive, until a keep_alive is given for it
(a load or a request with `keep_alive`): from then on that one applies.

The memory budget counts measured bytes: the process RSS (and GPU memory) that each load added, taken
after the backend's libraries are imported. Before a load, an estimate (file size times a factor that
this process learned from its own loads of that format and backend, or a default) decides which idle
models go, least recently used first; after it, the measured bytes decide. Models in use are never
evicted, and a load that cannot fit is refused (or unloaded again) without touching the others.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .backends.registry import backend_kind, batches
from .devices import gpu_used_bytes, process_rss, release_memory
from .errors import LoadFailed, MemoryBudgetExceeded, RuntimeFailure, WorkerLost
from .references import ModelSpec
from .scheduler import ModelWorker, Request, make_worker
from .stats import RequestStats, RollingFigures

MiB = 2**20

_learned: dict[tuple, list[float]] = {}  # (format, backend, task) -> (measured - context)/file of this process
_learned_lock = threading.Lock()
_measuring: dict[int, bool] = {}  # loads being measured in this process -> whether another overlapped it
_measuring_ids = iter(range(1, 2**62))


def _start_measuring() -> int:
    with _learned_lock:
        token = next(_measuring_ids)
        overlapped = bool(_measuring)
        for other in _measuring:
            _measuring[other] = True
        _measuring[token] = overlapped
        return token


def _stop_measuring(token: int) -> bool:
    """True when no other load ran in this process meanwhile: the RSS delta is this load's alone."""
    with _learned_lock:
        return not _measuring.pop(token, True)


def _kind(spec: ModelSpec, backend: str) -> tuple:
    return (spec.format, backend, spec.task)


def footprint_factor(spec: ModelSpec, backend: str) -> tuple[float, str]:
    """Bytes loaded per byte of file, and where the figure comes from ("measured" or "default")."""
    with _learned_lock:
        ratios = list(_learned.get(_kind(spec, backend), ()))
    if ratios:
        return max(ratios[-8:]), "measured"  # the largest of the recent loads: noise errs on the safe side
    # Before any load of the kind was measured, the backend's own default: conservative. The context a load
    # sets aside (llama.cpp's KV cache) is counted apart, on top (`context_bytes`). Measured on CPU
    # (llama.cpp; torch fp32): SmolLM2 GGUF 1.3x besides its KV cache, MiniLM folder 1.8x at load, 2.4x
    # after its first batch.
    return backend_kind(backend).footprint(spec), "default"


def estimate_footprint(spec: ModelSpec, backend: str, context: int = 0) -> int:
    """Bytes a model will take once loaded, before loading it: file size times the factor of its kind,
    plus the `context` bytes the load sets aside."""
    factor, _ = footprint_factor(spec, backend)
    return int(max(spec.size_bytes, 1) * factor) + context


def learn_footprint(spec: ModelSpec, backend: str, measured: int, context: int = 0) -> None:
    """Remember what a load of this kind really took besides its `context` bytes, for the next estimate."""
    if spec.size_bytes <= 0 or measured - context < spec.size_bytes:
        return  # below the file itself: the allocator reused memory freed before, or pages are not yet read
    with _learned_lock:
        ratios = _learned.setdefault(_kind(spec, backend), [])
        ratios.append((measured - context) / spec.size_bytes)
        del ratios[:-8]


def _mib(n: int | float) -> str:
    return f"{n / MiB:.0f} MiB"


@dataclass(eq=False)
class LoadedModel:
    key: tuple
    spec: ModelSpec
    backend_name: str
    backend: object
    worker: ModelWorker
    keep_alive: float
    estimate_bytes: int  # before the load
    measured_bytes: int  # process RSS (and GPU memory) that the load added
    footprint_bytes: int  # what the budget counts: the measured bytes, at least the file
    load_s: float
    loaded_at: float  # wall clock
    last_used: float  # cache clock
    active: int = 0
    unload_when_idle: bool = False
    pinned: bool = False  # kept loaded (keep_alive -1) until a keep_alive is given for it
    closed: bool = False  # its backend was closed (an unload, or its worker died)
    figures: RollingFigures = field(default_factory=RollingFigures)

    def expires_at(self) -> float | None:
        if self.active or self.keep_alive < 0:
            return None
        return self.last_used + self.keep_alive


class ModelCache:
    def __init__(self, *, load: Callable[[ModelSpec, str, dict], object], memory_budget: int | None,
                 queue_length: int, clock: Callable[[], float] = time.monotonic, reaper: bool = True,
                 prepare: Callable[[str], None] | None = None,
                 finished: Callable[[RequestStats], None] | None = None,
                 context_bytes: Callable[[ModelSpec, str, dict], int] | None = None):
        self._load = load
        # what a load sets aside for its context (KV cache), known before loading: counted apart from the file
        self._context_bytes = context_bytes or (lambda spec, backend, options: 0)
        # imports the backend's libraries before a load is measured: their one-time cost is not the model's
        self._prepare = prepare
        # told of each request a model's worker finished (its final figures): the runtime's listeners
        self._finished = finished or (lambda stats: None)
        self.memory_budget = memory_budget
        self.queue_length = queue_length
        self.clock = clock
        self._lock = threading.RLock()
        self._entries: dict[tuple, LoadedModel] = {}
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._reserved = 0
        self._stale: dict[tuple, LoadedModel] = {}  # replaced on disk, still finishing requests
        self.loads = 0  # real loads, for tests and status
        self.evictions = 0
        # models whose worker died: what happened and when, newest last (status and the monitor show them)
        self.worker_failures: deque[dict] = deque(maxlen=20)
        self._dead: dict[tuple, dict] = {}  # key -> its failure record, until the model loads again
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
        """What the budget counts: loaded models' footprints plus the estimates of loads under way."""
        with self._lock:
            held = list(self._entries.values()) + list(self._stale.values())
            return sum(e.footprint_bytes for e in held) + self._reserved

    def loading_bytes(self) -> int:
        with self._lock:
            return self._reserved

    # Files that change on disk ---------------------------------------------------------------
    def drop_replaced(self, spec: ModelSpec) -> list[LoadedModel]:
        """Unload entries loaded from an older file at `spec.path` (or one that is gone): never served stale."""
        return self._drop(lambda e: e.spec.path == spec.path and e.spec.key != spec.key)

    def drop_missing(self) -> list[LoadedModel]:
        """Unload entries whose files are gone from disk."""
        return self._drop(lambda e: not e.spec.path.exists())

    def _drop(self, stale: Callable[[LoadedModel], bool]) -> list[LoadedModel]:
        closing = []
        with self._lock:
            for entry in list(self._entries.values()):
                if not stale(entry):
                    continue
                if entry.active:  # its requests finish on what they started with; no new one gets it
                    entry.unload_when_idle = True
                    self._entries.pop(entry.key)
                    self._stale[entry.key] = entry
                else:
                    self._entries.pop(entry.key)
                    closing.append(entry)
        for entry in closing:
            self._close(entry)
        return closing

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
            self.drop_replaced(spec)
            if self._prepare is not None:
                self._prepare(backend)
            context = self._context_bytes(spec, backend, options)
            estimate = estimate_footprint(spec, backend, context)
            self._make_room(estimate, spec, backend, context)
            try:
                release_memory()  # a clean baseline: garbage of earlier requests is not this model's
                token = _start_measuring()
                try:
                    started, rss_before, gpu_before = time.perf_counter(), process_rss(), gpu_used_bytes()
                    instance = self._load(spec, backend, options)
                    load_s = time.perf_counter() - started
                    measured = max(0, process_rss() - rss_before) + max(0, gpu_used_bytes() - gpu_before)
                except RuntimeFailure as exc:
                    raise self._reload_failed(key, exc) from None
                except Exception as exc:
                    raise self._reload_failed(key, LoadFailed(
                        f"loading {spec.id!r} failed: {type(exc).__name__}: {exc}")) from None
                finally:
                    alone = _stop_measuring(token)
            except BaseException:
                with self._lock:
                    self._reserved -= estimate
                release_memory()
                raise
            if alone:  # loads that overlapped measured each other too: counted (safe side), never learned
                learn_footprint(spec, backend, measured, context)
            # RSS grows less when the allocator reuses memory that an earlier unload freed: a load measured
            # below what its kind took before is counted at that earlier figure, and never below its file.
            # A load measured below its own file says nothing of its size (freed memory was reused): it is
            # counted at its kind's estimate, learned or by default.
            factor, source = footprint_factor(spec, backend)
            least = spec.size_bytes + context
            footprint = max(measured, least)
            if source == "measured" or measured < least:
                footprint = max(footprint, int(spec.size_bytes * factor) + context)
            victims: list[LoadedModel] = []
            try:
                with self._lock:
                    self._reserved -= estimate
                    victims = self._fit(footprint, spec, backend, measured=True)
                    entry = LoadedModel(
                        key=key, spec=spec, backend_name=backend, backend=instance,
                        keep_alive=default_keep_alive if keep_alive is None else keep_alive,
                        worker=None, estimate_bytes=estimate, measured_bytes=measured, footprint_bytes=footprint,
                        load_s=load_s, loaded_at=time.time(), last_used=self.clock(), active=1,
                    )
                    entry.worker = make_worker(spec.id, instance, batching=batches(backend, spec),
                                               queue_length=self.queue_length,
                                               on_finished=lambda request, e=entry: self.count(e, request),
                                               on_done=lambda request, e=entry: self.release(e),
                                               on_death=lambda worker, exc, e=entry: self._worker_died(e))
                    self._entries[key] = entry
                    self.loads += 1
                    dead = self._dead.pop(key, None)
                    if dead is not None:
                        dead["reloaded_at"] = time.time()
            except BaseException:
                try:  # over the budget once measured: the new model goes, what was loaded stays
                    instance.close()
                finally:
                    del instance
                    release_memory()
                raise
            for victim in victims:
                self._close(victim)
            return entry, load_s

    def _hold(self, key: tuple, keep_alive: float | None) -> LoadedModel | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.active += 1
                entry.unload_when_idle = False
                if keep_alive is not None:
                    entry.keep_alive = keep_alive
                    entry.pinned = False
            return entry

    def pin(self, entry: LoadedModel) -> None:
        """Keep `entry` loaded however long it idles, until a request or load gives it a keep_alive."""
        with self._lock:
            entry.keep_alive = -1.0
            entry.pinned = True
            self._wake.notify_all()

    def count(self, entry: LoadedModel, request: Request) -> None:
        """A finished request's figures, in the model's and the runtime's."""
        entry.figures.add(request.stats)
        self._finished(request.stats)

    def release(self, entry: LoadedModel) -> None:
        """A request is done with the model: restart its idle timer, unload now if keep_alive is 0."""
        with self._lock:
            entry.active -= 1
            entry.last_used = self.clock()
            unload = entry.active == 0 and (entry.keep_alive == 0 or entry.unload_when_idle)
            if unload:
                if self._entries.get(entry.key) is entry:
                    self._entries.pop(entry.key)
                if self._stale.get(entry.key) is entry:
                    self._stale.pop(entry.key)
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

    # A worker that died -----------------------------------------------------------------------
    def _worker_died(self, entry: LoadedModel) -> None:
        """On the dying worker's thread, before its requests end: the model leaves the cache (the next
        request loads it again), its death is recorded, and its backend is closed."""
        worker = entry.worker
        record = {"model": entry.spec.id, "backend": entry.backend_name, "died_at": worker.died_at,
                  "error": worker.death, "requests_failed": worker.queue_depth, "reloaded_at": None,
                  "reload_error": None}
        with self._lock:
            if self._entries.get(entry.key) is entry:
                self._entries.pop(entry.key)
            if self._stale.get(entry.key) is entry:
                self._stale.pop(entry.key)
            self.worker_failures.append(record)
            self._dead[entry.key] = record
            self._wake.notify_all()
        self._close(entry)

    def _reload_failed(self, key: tuple, exc: RuntimeFailure) -> RuntimeFailure:
        """A failed load of a model whose worker died says so (a 503: a later request tries again)."""
        with self._lock:
            dead = self._dead.get(key)
            if dead is None:
                return exc
            dead["reload_error"] = exc.message
        when = time.strftime("%H:%M:%S", time.localtime(dead["died_at"]))
        return WorkerLost(f"the worker of {dead['model']!r} died at {when} ({dead['error']}); "
                          f"loading it again failed: {exc.message}")

    def failure_records(self) -> list[dict]:
        with self._lock:
            return [dict(record) for record in self.worker_failures]

    def _close(self, entry: LoadedModel) -> None:
        with self._lock:  # once: a dead worker's model is closed at its death, its last release finds it closed
            if entry.closed:
                return
            entry.closed = True
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

    def estimate(self, spec: ModelSpec, backend: str, options: dict) -> int:
        """Bytes a load of `spec` with `options` is expected to take, as the budget counts it before loading."""
        return estimate_footprint(spec, backend, self._context_bytes(spec, backend, options))

    def _make_room(self, estimate: int, spec: ModelSpec, backend: str, context: int) -> None:
        """Before a load: evict idle models (least recently used first) so the estimate fits, and reserve it.

        An estimate learned from this process's loads of the kind is trusted: what cannot fit is refused
        before loading. A default factor is only a guess, which must not refuse a model that fits: then the
        file itself (the least any load takes) must fit once idle models go, nothing is evicted on the guess,
        and the measured bytes decide after the load (evicting idle models then, or unloading the new one).
        """
        learned = footprint_factor(spec, backend)[1] == "measured"
        with self._lock:
            victims = self._fit(estimate if learned else spec.size_bytes + context, spec, backend,
                                measured=False, learned=learned, evict=learned, context=context)
            self._reserved += estimate
        for victim in victims:
            self._close(victim)

    def _fit(self, needed: int, spec: ModelSpec, backend: str, *, measured: bool,
             learned: bool = True, evict: bool = True, context: int = 0) -> list[LoadedModel]:
        """Under the lock: take the idle models that must go for `needed` more bytes out of the cache and
        return them for closing; or raise MemoryBudgetExceeded and take nothing."""
        budget = self.memory_budget
        if budget is None:
            return []
        if measured:
            what = f"measured {_mib(needed)} once loaded"
        elif learned:
            kv = f" + {_mib(context)} of context" if context else ""
            what = (f"needs about {_mib(needed)} (its {_mib(spec.size_bytes)} file x "
                    f"{footprint_factor(spec, backend)[0]:.1f}, as measured here for {spec.format} on {backend}{kv})")
        else:
            what = (f"needs more than its {_mib(spec.size_bytes)} file and {_mib(context)} of context" if context
                    else f"needs more than its {_mib(needed)} file")
        if needed > budget:
            raise MemoryBudgetExceeded(
                f"{spec.id!r} {what}; the memory budget is {_mib(budget)}, so it cannot be loaded; "
                f"models already loaded are kept")
        # pinned models go last: they were asked for up front
        idle = sorted((e for e in self._entries.values() if not e.active), key=lambda e: (e.pinned, e.last_used))
        used = self.used_bytes()
        victims = []
        while used + needed > budget and idle:
            victim = idle.pop(0)
            victims.append(victim)
            used -= victim.footprint_bytes
        if used + needed > budget:
            busy = sorted({e.spec.id for e in self._entries.values() if e.active} |
                          {e.spec.id for e in self._stale.values()})
            held = f"held by models in use ({', '.join(busy)})" if busy else "held by loads under way"
            raise MemoryBudgetExceeded(
                f"{spec.id!r} {what}; {_mib(used)} of the {_mib(budget)} memory budget is {held}, "
                f"which are never evicted; it was not loaded and nothing else was unloaded")
        if not evict:
            return []
        for victim in victims:
            self._entries.pop(victim.key)
        self.evictions += len(victims)
        return victims

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
