"""Embeddings kept on disk between runs: the second level under the runtime's in-memory cache.

A `diskcache.Cache` (SQLite, safe for several kernels and the server at once, LRU eviction under a
size cap) in `~/.cache/universal-kernel/embeddings` (`UNIVERSAL_KERNEL_EMBEDDING_CACHE`: a folder,
or `off`). A row's key is everything that changes its vector:
- the model's content fingerprint (a hash of its weight files' bytes, not its name or path),
- what the backend does with it (pooling, length limit, dimensions, precision; `vector_settings()`),
- the normalisation,
- a hash of the text.

Each value carries a digest of its own bytes: a corrupt entry (a torn write, a disk error, another
program's data) is dropped with a warning and computed again, never served.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import warnings
from pathlib import Path

import numpy as np

from ..references import ModelSpec, weight_files

_HEADER = struct.Struct("<16sII")  # digest of the rest, prompt tokens, dimensions
#: bytes read at a time when hashing weight files
_CHUNK = 1 << 22


class CorruptEntry(RuntimeWarning):
    """An entry of the embedding cache on disk did not match its digest; it was dropped."""


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def encode(vector: np.ndarray, tokens: int) -> bytes:
    body = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    rest = struct.pack("<II", int(tokens), vector.shape[0]) + body
    return _HEADER.pack(_digest(rest), int(tokens), vector.shape[0]) + body


def decode(value) -> tuple[np.ndarray, int] | None:
    """(vector, tokens), or None when the bytes do not check out."""
    if not isinstance(value, (bytes, bytearray)) or len(value) < _HEADER.size:
        return None
    digest, tokens, dims = _HEADER.unpack_from(value)
    body = bytes(value[_HEADER.size:])
    if len(body) != 4 * dims or _digest(struct.pack("<II", tokens, dims) + body) != digest:
        return None
    return np.frombuffer(body, dtype=np.float32).copy(), tokens


def text_key(scope: str, text: str) -> str:
    return scope + ":" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingStore:
    """Vectors on disk, shared by every process that opens the same folder."""

    def __init__(self, folder: Path | str, size_limit: int = 2 << 30):
        import diskcache

        self.folder = Path(folder)
        self.size_limit = int(size_limit)
        self.cache = diskcache.Cache(str(self.folder), size_limit=self.size_limit,
                                     eviction_policy="least-recently-used")
        self._fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()

    def fingerprint(self, spec: ModelSpec) -> str:
        """A hash of the model's weight files' contents, worked out once per version of the files."""
        with self._lock:
            known = self._fingerprints.get(spec.key)
        if known is not None:
            return known
        memo = ("fingerprint", spec.key)  # spec.key holds the files' sizes and mtimes
        value = self.cache.get(memo)
        if not isinstance(value, str):
            hasher = hashlib.blake2b(digest_size=20)
            for path in weight_files(Path(spec.path)):
                hasher.update(path.name.encode())
                with open(path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        hasher.update(chunk)
            value = hasher.hexdigest()
            self.cache.set(memo, value)
        with self._lock:
            self._fingerprints[spec.key] = value
        return value

    def scope(self, spec: ModelSpec, settings: dict, normalize: bool) -> str:
        """The part of every key that names the model and the settings its vectors depend on."""
        described = json.dumps({"model": self.fingerprint(spec), "settings": settings, "normalize": bool(normalize)},
                               sort_keys=True, default=str)
        return hashlib.blake2b(described.encode(), digest_size=16).hexdigest()

    def get_many(self, scope: str, texts: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        found, corrupt = {}, []
        for text in texts:
            key = text_key(scope, text)
            value = self.cache.get(key)
            if value is None:
                continue
            row = decode(value)
            if row is None:
                corrupt.append(key)
                continue
            found[text] = row
        for key in corrupt:
            self.cache.delete(key)
        if corrupt:
            warnings.warn(f"the embedding cache in {self.folder} had {len(corrupt)} corrupt "
                          f"entr{'y' if len(corrupt) == 1 else 'ies'}: dropped, and computed again", CorruptEntry,
                          stacklevel=2)
        return found

    def put_many(self, scope: str, rows: dict[str, tuple[np.ndarray, int]]) -> None:
        with self.cache.transact():  # one SQLite transaction for the batch: its writes cost little
            for text, (vector, tokens) in rows.items():
                self.cache.set(text_key(scope, text), encode(vector, tokens))

    def clear(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        self.cache.close()


_stores: dict[tuple[str, int], EmbeddingStore] = {}
_stores_lock = threading.Lock()


def open_store(folder: Path | str | None, size_limit: int) -> EmbeddingStore | None:
    """The process's store for `folder` (one connection per folder), or None when the cache is off."""
    if folder is None:
        return None
    key = (str(Path(folder).resolve()), int(size_limit))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = EmbeddingStore(folder, size_limit)
        return store
