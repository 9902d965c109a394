"""Backends and the choice between them (`registry.BACKENDS` declares each). Each backend module imports its
library only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidRequest
from .base import Backend, GenerationOutcome, GenerationParams, StopMatcher
from .registry import BACKENDS as REGISTRY
from .registry import batches, create, import_library, precision_status, prompt_reuse_status

if TYPE_CHECKING:
    from ..config import RuntimeConfig
    from ..model_spec import ModelSpec

#: what a request's `backend` may name
BACKENDS = ("auto", *REGISTRY)

__all__ = ["BACKENDS", "Backend", "GenerationOutcome", "GenerationParams", "StopMatcher", "batches",
           "choose_backend", "context_bytes", "create_backend", "import_library", "precision_status",
           "prompt_reuse_status"]


def choose_backend(spec: "ModelSpec", backend: str = "auto") -> str:
    """The backend that loads `spec`: the one asked for, or the first that "auto" may choose; InvalidRequest
    when the one asked for does not load it."""
    if backend != "auto" and backend not in REGISTRY:
        raise InvalidRequest(f"unknown backend {backend!r}; use one of auto, {', '.join(REGISTRY)}", param="backend")
    loaders = [kind for kind in REGISTRY.values() if kind.loads_spec(spec)]
    if backend == "auto":
        chosen = next((kind for kind in loaders if kind.auto), None)
        if chosen is None:
            raise InvalidRequest(f"no backend loads {spec.id!r} ({spec.format}, {spec.task})", param="backend")
        return chosen.name
    if any(kind.name == backend for kind in loaders):
        return backend
    what = next((f.what for f in (k.recognises for k in REGISTRY.values()) if f and f.name == spec.format),
                f"a {spec.format} model")
    if len(loaders) == 1:
        raise InvalidRequest(f"{spec.id!r} is {what} ({spec.task}); only the {loaders[0].name} backend serves it",
                             param="backend")
    raise InvalidRequest(f"{spec.id!r} is {what} ({spec.task}); the {backend} backend serves "
                         f"{REGISTRY[backend].serves} only", param="backend")


def context_bytes(spec: "ModelSpec", backend: str, config: "RuntimeConfig", options: dict) -> int:
    """Bytes a load sets aside for its context (llama.cpp's KV cache of every sequence), known before
    loading: the memory budget counts them apart from the file, whose multiple they are not."""
    return REGISTRY[backend].context_bytes(spec, config, options)


def create_backend(spec: "ModelSpec", backend: str, config: "RuntimeConfig", options: dict) -> Backend:
    return create(spec, backend, config, options)
