"""Embeddings: the runtime part. Identical texts are embedded once; a cache keeps rows already computed.

Other tasks built on an embedding model (rerank, zero-shot classify) take their rows from `embed_rows`,
so they share the cache and its counts.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import MAGICS, Setting, cache_folder
from ..stats import RequestStats
from . import TaskCall, check_lengths, embed_decisions, require, texts_input


def _cache_folder_from_env(raw: str) -> Path | None:
    return None if raw.strip().lower() in ("", "off", "0", "false", "no") else Path(raw)


#: its settings, collected through the registry: `RuntimeConfig(embedding_cache_folder=None)`,
#: `config.embedding_cache_bytes`, `c.UniversalKernelMagics.embed_chunk_rows`
SETTINGS = (
    Setting("embedding_cache_folder", "path", cache_folder("embeddings"),
            "Where embeddings are kept between runs (shared by kernels and the server); None (or `off`) turns "
            "it off.", env="UNIVERSAL_KERNEL_EMBEDDING_CACHE", optional=True, parse=_cache_folder_from_env),
    Setting("embedding_cache_bytes", "int", 2 * 1024**3,
            "The most bytes the embedding cache may take; the least recently used rows go first.",
            env="UNIVERSAL_KERNEL_EMBEDDING_CACHE_BYTES"),
    Setting("embed_chunk_rows", "int", 256, "Rows embedded per request by %embed.", where={MAGICS}),
)


@dataclass
class EmbeddingResult:
    model: str
    vectors: np.ndarray  # float32, one row per input, in input order
    prompt_tokens: int
    stats: RequestStats


class EmbeddingCache:
    """Vectors of texts already embedded, per model and normalisation, least recently used out first.

    Bounded in bytes, not rows (a server runs for days: a row of a long text or a wide model weighs more):
    each row counts its vector, its text and the bookkeeping around them (`ROW_OVERHEAD`)."""

    #: bytes of one row besides its vector and text: the key tuple, the OrderedDict node, the value tuple
    ROW_OVERHEAD = 200

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def _row_bytes(cls, text: str, vector: np.ndarray) -> int:
        return vector.nbytes + sys.getsizeof(text) + cls.ROW_OVERHEAD

    @property
    def bytes(self) -> int:
        """What the rows kept now weigh, as the bound counts them."""
        with self._lock:
            return self._bytes if self._rows else 0

    def get(self, scope: tuple, text: str):
        with self._lock:
            hit = self._rows.get((scope, text))
            if hit is not None:
                self._rows.move_to_end((scope, text))
            return hit

    def put(self, scope: tuple, text: str, vector: np.ndarray, tokens: int) -> None:
        with self._lock:
            if not self._rows:
                self._bytes = 0  # emptied from outside (`_rows.clear()`: a cold cache in tests and benches)
            old = self._rows.pop((scope, text), None)
            if old is not None:
                self._bytes -= self._row_bytes(text, old[0])
            self._rows[(scope, text)] = (vector, tokens)
            self._bytes += self._row_bytes(text, vector)
            while self._bytes > self.max_bytes and len(self._rows) > 1:
                (_, dropped), (vector_out, _) = self._rows.popitem(last=False)
                self._bytes -= self._row_bytes(dropped, vector_out)


def embed(runtime, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
          backend: str = "auto", keep_alive: float | None = None, cache: bool = True,
          precision: str = "auto") -> EmbeddingResult:
    """One vector per text (float32 rows, in input order). `cache=False` computes every row: neither the
    memory nor the disk cache is read or written. `precision="fp32"` forces fp32 (precision.py): a
    separate instance where auto runs bf16."""
    return runtime.run(call(texts, model, normalize=normalize, backend=backend, keep_alive=keep_alive, cache=cache,
                            precision=precision))


async def aembed(runtime, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
                 backend: str = "auto", keep_alive: float | None = None) -> EmbeddingResult:
    """`embed` for the event loop (the server's)."""
    return await runtime.arun(call(texts, model, normalize=normalize, backend=backend, keep_alive=keep_alive))


def call(texts, model: str | None = None, *, normalize: bool = True, backend: str = "auto",
         keep_alive: float | None = None, cache: bool = True, precision: str = "auto") -> TaskCall:
    return TaskCall("embed", model, {"texts": texts_input(texts), "normalize": bool(normalize), "cache": bool(cache)},
                    backend, keep_alive, options=precision_option(precision))


def precision_option(precision: str | None) -> dict:
    """The load option for an asked precision: none for "auto", so the default instance serves it; none
    for "fp32" where auto is fp32 anyway (a CPU without bf16), so no second copy loads for nothing."""
    from ..precision import check, cpu_has_bf16

    precision = check(precision)
    if precision == "auto" or (precision == "fp32" and not cpu_has_bf16()):
        return {}
    return {"precision": precision}


def vector_settings(instance) -> dict:
    """What the backend does that changes a model's vectors: the engine that computes them (its declared
    `name`: an "onnx" load that ONNX Runtime refused is computed by "transformers") and its own settings
    (pooling, length, precision...)."""
    return {"backend": instance.name, **instance.vector_settings()}


def embed_rows(ctx, instance, texts: list[str], normalize: bool = True, *, truncate: bool | None = None,
               param: str = "input", cache: bool = True) -> tuple[np.ndarray, int]:
    """(float32 matrix, one row per text; prompt tokens), through the runtime's embedding caches:
    in memory first, then on disk (tasks/embedding_store.py); `cache=False` computes every row.

    `truncate=False` refuses a text over the model's length (the other tasks); None keeps what the
    embedding model does itself (it truncates, as sentence-transformers does).
    """
    if truncate is False:
        check_lengths(instance, texts, False, param)
    if not cache:
        distinct = list(dict.fromkeys(texts))
        vectors, _ = instance.embed(distinct, normalize)
        found = {t: (v, instance.count_tokens(t)) for t, v in zip(distinct, vectors)}
        ctx.stats.rows_computed += len(distinct)
        rows = [found[t] for t in texts]
    else:
        memory, scope = ctx.runtime.embedding_cache, (ctx.entry.key, bool(normalize))
        rows = [memory.get(scope, t) for t in texts]
        missing = list(dict.fromkeys(t for t, row in zip(texts, rows) if row is None))
        store = ctx.runtime.embedding_store
        computed = missing
        if missing and store is not None:
            settings = vector_settings(instance)
            # kept for the next process: its cached rows then need no model (answer_without_model)
            embed_decisions.record(store, ctx.spec, ctx.entry.backend_name, dict(ctx.entry.key[2]),
                                   ctx.runtime.config, settings)
            disk_scope = store.scope(ctx.spec, settings, normalize)
            on_disk = store.get_many(disk_scope, missing)
            for text, (vector, tokens) in on_disk.items():
                memory.put(scope, text, vector, tokens)
            computed = [t for t in missing if t not in on_disk]
        if computed:
            vectors, _ = instance.embed(computed, normalize)
            fresh = {text: (vector, instance.count_tokens(text)) for text, vector in zip(computed, vectors)}
            for text, (vector, tokens) in fresh.items():
                memory.put(scope, text, vector, tokens)
            if store is not None:
                store.put_many(disk_scope, fresh)
        if missing:
            rows = [memory.get(scope, t) for t in texts]
        ctx.stats.rows_computed += len(computed)
        ctx.stats.rows_cached += len(texts) - len(computed)
    if not rows:
        return np.zeros((0, 0), dtype=np.float32), 0
    matrix = np.vstack([r[0] for r in rows]).astype(np.float32, copy=False)
    return matrix, sum(r[1] for r in rows)


def work(ctx):

    texts, normalize, cache = ctx.inputs["texts"], ctx.inputs["normalize"], ctx.inputs.get("cache", True)

    def run(instance, emit, cancelled) -> EmbeddingResult:
        matrix, tokens = embed_rows(ctx, instance, texts, normalize, cache=cache)
        ctx.stats.prompt_tokens = tokens
        return EmbeddingResult(ctx.spec.id, matrix, tokens, ctx.stats)

    return run


def answer_without_model(runtime, call: TaskCall):
    """The result of an embed call whose rows are all in the caches, with no model loaded and no torch
    imported (the key of a row on disk comes from the settings a load recorded: embed_decisions.py);
    None when a row must be computed, the model is loaded anyway, or anything is amiss: then the call
    takes the usual path, which loads the model and says what is wrong."""
    import time

    from ..backends import choose_backend
    from ..cache import ModelCache
    from ..stats import RequestStats

    store, inputs = runtime.embedding_store, call.inputs
    if store is None or not inputs.get("cache", True) or not inputs["texts"]:
        return None
    created, started = time.time(), time.perf_counter()
    try:
        spec = runtime.resolve(call.model or runtime.config.default_embedding_model)
        require("embed", spec)
        backend = choose_backend(spec, call.backend)
        key = ModelCache.make_key(spec, backend, call.options)
        if any(entry.key == key for entry in runtime.cache.entries()):
            return None  # loaded: the usual path reads the same caches, and keeps the model's figures
        settings = embed_decisions.recall(store, spec, backend, call.options, runtime.config)
        if settings is None:
            return None
        texts, normalize = inputs["texts"], bool(inputs["normalize"])
        memory, scope = runtime.embedding_cache, (key, normalize)
        found = {text: memory.get(scope, text) for text in dict.fromkeys(texts)}
        missing = [text for text, row in found.items() if row is None]
        if missing:
            on_disk = store.get_many(store.scope(spec, settings, normalize), missing)
            for text, (vector, tokens) in on_disk.items():
                memory.put(scope, text, vector, tokens)  # the usual path finds them here if a row is missing
                found[text] = (vector, tokens)
            if len(on_disk) < len(missing):
                return None
    except Exception:  # noqa: BLE001 - a shortcut only: the usual path answers, or raises what is wrong
        return None
    rows = [found[text] for text in texts]
    matrix = np.vstack([row[0] for row in rows]).astype(np.float32, copy=False)
    tokens = sum(row[1] for row in rows)
    stats = RequestStats(model=spec.id, backend=backend, kind="embed", created_at=created, prompt_tokens=tokens,
                         rows_cached=len(texts), total_s=time.perf_counter() - started, finish_reason="stop")
    return EmbeddingResult(spec.id, matrix, tokens, stats)
