"""What a loaded embedding model decided about its vectors, kept on disk so that cached rows need no model.

The disk cache's key of a row (tasks/embedding_store.py) holds the weights' fingerprint and the backend's
`vector_settings()`: pooling, length, dimensions, and the precision that the backend chose at load (bf16
only behind a probe, precision.py). Without this record, building that key meant importing torch,
loading the model and running the probe, seconds spent to read rows that are already on disk.

So each load's settings are recorded in the same disk cache, under a key of everything that decided them:
- the weights' content fingerprint (itself kept per path, size and mtime: `EmbeddingStore.fingerprint`),
- the backend and load options asked for, the configured precision, probe threshold and device,
- the CPU's flags as the runtime reads them (machine.py, with its seam), and whether a GPU is visible,
- the versions of the libraries that compute the vectors.
A change of any of them finds no record: the model loads, computes, and records the new settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache

from ..machine import cpu_flags

#: the libraries whose versions can change a vector (the encoders' backends and this package)
LIBRARIES = ("universal-kernel", "torch", "transformers", "tokenizers", "onnxruntime", "optimum", "optimum-onnx")


@lru_cache(maxsize=1)
def library_versions() -> tuple:
    """(name, version or None) of each of LIBRARIES, read from the installed metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in LIBRARIES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, None))
    return tuple(found)


def machine() -> dict:
    """What of this machine decides the settings: its CPU flags (hashed) and the GPUs a load could pick."""
    flags = hashlib.blake2b(" ".join(sorted(cpu_flags())).encode(), digest_size=16).hexdigest()
    return {"cpu_flags": flags, "platform": sys.platform,
            "nvidia": os.path.exists("/proc/driver/nvidia/version"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def decision_key(fingerprint: str, backend: str, options: dict, config) -> tuple:
    """A tuple, as the fingerprints' memo: the rows' keys are strings (`text_key`), never confused with it."""
    described = json.dumps({
        "model": fingerprint, "backend": backend, "options": sorted(options.items()),
        "precision": config.precision, "min_cosine": config.precision_min_cosine, "device": config.device,
        "machine": machine(), "libraries": library_versions(),
    }, sort_keys=True, default=str)
    return ("embed-decision", hashlib.blake2b(described.encode(), digest_size=20).hexdigest())


def recall(store, spec, backend: str, options: dict, config) -> dict | None:
    """The vector settings a load of `spec` recorded on this machine, or None (the model must load)."""
    value = store.cache.get(decision_key(store.fingerprint(spec), backend, options, config))
    if not isinstance(value, str):
        return None
    try:
        settings = json.loads(value)
    except ValueError:
        return None
    return settings if isinstance(settings, dict) else None


def record(store, spec, backend: str, options: dict, config, settings: dict) -> None:
    """Keep a loaded instance's settings for the next process (read first: a write only when they changed)."""
    key = decision_key(store.fingerprint(spec), backend, options, config)
    value = json.dumps(settings, sort_keys=True, default=str)
    if store.cache.get(key) != value:
        store.cache.set(key, value)
