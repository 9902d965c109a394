"""Backends and the choice between them. Each backend module imports its library only when used."""

from __future__ import annotations

from ..config import RuntimeConfig
from ..devices import cpu_threads, pick_device
from ..errors import InvalidRequest
from ..references import ModelSpec
from .base import Backend, GenerationOutcome, GenerationParams, StopMatcher

BACKENDS = ("auto", "llama_cpp", "transformers", "onnx", "spacy", "rapidocr")

__all__ = ["BACKENDS", "Backend", "GenerationOutcome", "GenerationParams", "StopMatcher",
           "choose_backend", "context_bytes", "create_backend"]


def choose_backend(spec: ModelSpec, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise InvalidRequest(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}", param="backend")
    if spec.format == "spacy":
        if backend not in ("auto", "spacy"):
            raise InvalidRequest(f"{spec.id!r} is a spaCy pipeline; only the spacy backend serves it",
                                 param="backend")
        return "spacy"
    if spec.format == "rapidocr":
        if backend not in ("auto", "rapidocr"):
            raise InvalidRequest(f"{spec.id!r} is a RapidOCR model; only the rapidocr backend serves it",
                                 param="backend")
        return "rapidocr"
    if backend == "rapidocr":
        raise InvalidRequest(f"{spec.id!r} is no RapidOCR model; the rapidocr backend serves rapidocr only",
                             param="backend")
    if backend == "spacy":
        raise InvalidRequest(f"{spec.id!r} is no spaCy pipeline; the spacy backend serves spaCy folders",
                             param="backend")
    if backend == "onnx" and not (spec.format == "transformers" and spec.task == "embed"):
        raise InvalidRequest(f"{spec.id!r} is no encoder embedding folder; the onnx backend serves those only",
                             param="backend")
    if backend == "auto":
        return "llama_cpp" if spec.format == "gguf" else "transformers"
    if backend == "llama_cpp" and spec.format != "gguf":
        raise InvalidRequest(f"{spec.id!r} is a transformers folder; llama_cpp serves .gguf files",
                             param="backend")
    if backend == "transformers" and spec.format == "gguf" and spec.task == "embed":
        raise InvalidRequest("GGUF embedding models are served by llama_cpp", param="backend")
    return backend


def context_bytes(spec: ModelSpec, backend: str, config: RuntimeConfig, options: dict) -> int:
    """Bytes a load sets aside for its context (llama.cpp's KV cache of every sequence), known before
    loading: the memory budget counts them apart from the file, whose multiple they are not."""
    if backend != "llama_cpp" or spec.task == "embed":
        return 0
    from .llama_cpp import default_context, kv_cache_bytes

    parallel = max(1, int(options.get("parallel") or config.parallel))
    return kv_cache_bytes(spec, (options.get("n_ctx") or default_context(spec)) * parallel)


def create_backend(spec: ModelSpec, backend: str, config: RuntimeConfig, options: dict) -> Backend:
    threads = cpu_threads(config.threads)
    if backend == "llama_cpp":
        from .llama_cpp import LlamaCppBackend

        return LlamaCppBackend(spec, threads=threads, device=config.device, n_ctx=options.get("n_ctx"),
                               parallel=options.get("parallel") or config.parallel)
    if backend == "spacy":
        from .spacy_pipeline import SpacyBackend

        return SpacyBackend(spec)
    if backend == "rapidocr":
        from .rapidocr_engine import RapidOcrBackend

        return RapidOcrBackend(spec, threads=threads)
    if backend == "onnx":
        from .onnx_encoder import load_encoder

        # before pick_device, which imports torch to look for a GPU: ONNX Runtime runs here on the CPU
        return load_encoder(spec, device=config.device, threads=threads,
                            precision=options.get("precision") or config.precision,
                            min_cosine=config.precision_min_cosine, convert_cache=config.convert_cache)
    device = pick_device(config.device)
    # Classifier heads load from their folders; a GGUF keeps the paths below.
    if spec.format == "transformers" and spec.task in ("classify", "rerank"):
        from .transformers_classify import TransformersSequenceClassifier

        return TransformersSequenceClassifier(spec, device=device, threads=threads,
                                              precision=options.get("precision") or config.precision)
    if spec.format == "transformers" and spec.task == "ner":
        from .transformers_classify import TransformersTokenClassifier

        return TransformersTokenClassifier(spec, device=device, threads=threads,
                                           precision=options.get("precision") or config.precision)
    if spec.task == "embed":
        from .transformers_embed import TransformersEmbedBackend

        return TransformersEmbedBackend(spec, device=device, threads=threads,
                                        precision=options.get("precision") or config.precision,
                                        min_cosine=config.precision_min_cosine)
    from .transformers_lm import TransformersLMBackend

    return TransformersLMBackend(spec, device=device, threads=threads, convert_cache=config.convert_cache)
