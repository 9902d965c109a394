"""The backends a runtime can load models with, each one declaration: `BACKENDS`.

A declaration says what the runtime, the cache, the scheduler and the model references need to know about a
backend without importing it: the format it recognises on disk (`formats.py`), the (format, model kind)
pairs it loads, the tasks it serves, the model kinds whose generations it decodes together, the library
to import before its first load is measured, how to build a loaded backend, and what it reports in
status. Nothing outside this module decides by a backend's name or class; adding a backend is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..devices import cpu_threads
from .formats import GGUF, HF_FOLDER, RAPIDOCR, SPACY, ModelFormat

if TYPE_CHECKING:
    from ..config import RuntimeConfig
    from ..model_spec import ModelSpec
    from .base import Backend

#: the default loaded bytes per byte of file, before this process has measured a load of the kind
DEFAULT_FOOTPRINT = 3.0


def _no_status(backend: "Backend", spec: "ModelSpec") -> dict:
    return {}


def _no_context(spec: "ModelSpec", config: "RuntimeConfig", options: dict) -> int:
    return 0


@dataclass(frozen=True)
class BackendKind:
    """One backend, declared."""

    name: str
    #: (format, model kind) pairs it loads; "*" as the kind: any kind of that format
    loads: frozenset[tuple[str, str]]
    #: the tasks it serves (each task's own registry line says which model kinds serve it)
    tasks: frozenset[str]
    #: what it loads, in words, for a refusal: ".gguf files"
    serves: str
    #: builds the loaded backend: (spec, config, load options, threads) -> Backend
    create: Callable[["ModelSpec", "RuntimeConfig", dict, int], "Backend"]
    #: imports its library (and starts a GPU's context) given the configured device, before a load is
    #: measured: one-time costs of the process, not the model's footprint
    library: Callable[[str], None]
    #: the format on disk whose models it recognises (None: it loads another backend's format)
    recognises: ModelFormat | None = None
    #: whether backend="auto" may choose it (the first declaration in `BACKENDS` that loads a model wins)
    auto: bool = True
    #: model kinds whose generations it decodes together (scheduler.BatchingWorker), up to its `parallel`
    batches: frozenset[str] = frozenset()
    #: bytes a load sets aside for its context, known before loading (counted apart from the file)
    context_bytes: Callable[["ModelSpec", "RuntimeConfig", dict], int] = _no_context
    #: loaded bytes per byte of file before any load of the kind was measured
    footprint: Callable[["ModelSpec"], float] = lambda spec: DEFAULT_FOOTPRINT
    #: {"precision", "precision_reason"} of a loaded model
    precision: Callable[["Backend", "ModelSpec"], dict] = _no_status
    #: {"prompt_reuse": ...} of a loaded model, when it reuses prompts (a batching backend)
    prompt_reuse: Callable[["Backend", "ModelSpec"], dict] = _no_status

    def loads_spec(self, spec: "ModelSpec") -> bool:
        return (spec.format, spec.task) in self.loads or (spec.format, "*") in self.loads


# Libraries ------------------------------------------------------------------------------------------------
def _import_llama(device: str) -> None:
    from .llama_cpp import llama_library

    llama_library()


def _import_spacy(device: str) -> None:
    import spacy  # noqa: F401


def _import_onnxruntime(device: str) -> None:
    import onnxruntime  # noqa: F401  (an "onnx" load imports torch only when it must export)


def _import_torch(device: str) -> None:
    import torch
    import transformers  # noqa: F401

    from ..devices import pick_device

    chosen = pick_device(device)
    if chosen.kind == "cuda":
        torch.zeros(1, device=chosen.torch_name)  # creates the context once; a no-op later


# Loading ----------------------------------------------------------------------------------------------------
def _precision_option(config: "RuntimeConfig", options: dict) -> str:
    return options.get("precision") or config.precision


def _create_llama(spec, config, options, threads):
    from .llama_cpp import LlamaCppBackend

    return LlamaCppBackend(spec, threads=threads, device=config.device, n_ctx=options.get("n_ctx"),
                           parallel=options.get("parallel") or config.parallel)


def _create_spacy(spec, config, options, threads):
    from .spacy_pipeline import SpacyBackend

    return SpacyBackend(spec)


def _create_rapidocr(spec, config, options, threads):
    from .rapidocr_engine import RapidOcrBackend

    return RapidOcrBackend(spec, threads=threads)


def _create_onnx(spec, config, options, threads):
    from .onnx_encoder import load_encoder

    # before pick_device, which imports torch to look for a GPU: ONNX Runtime runs here on the CPU
    return load_encoder(spec, device=config.device, threads=threads, precision=_precision_option(config, options),
                        min_cosine=config.precision_min_cosine, convert_cache=config.convert_cache)


def _create_transformers(spec, config, options, threads):
    from ..devices import pick_device

    device = pick_device(config.device)
    precision = _precision_option(config, options)
    # Classifier heads load from their folders; a GGUF keeps the paths below.
    if spec.format == "transformers" and spec.task in ("classify", "rerank"):
        from .transformers_classify import TransformersSequenceClassifier

        return TransformersSequenceClassifier(spec, device=device, threads=threads, precision=precision)
    if spec.format == "transformers" and spec.task == "ner":
        from .transformers_classify import TransformersTokenClassifier

        return TransformersTokenClassifier(spec, device=device, threads=threads, precision=precision)
    if spec.task == "embed":
        from .transformers_embed import TransformersEmbedBackend

        return TransformersEmbedBackend(spec, device=device, threads=threads, precision=precision,
                                        min_cosine=config.precision_min_cosine)
    from .transformers_lm import TransformersLMBackend

    return TransformersLMBackend(spec, device=device, threads=threads, convert_cache=config.convert_cache)


# What they set aside and report -------------------------------------------------------------------------------
def _llama_context_bytes(spec, config, options) -> int:
    """llama.cpp's KV cache of every sequence: it grows with the context and the sequences, not the file."""
    if spec.task == "embed":
        return 0
    from .llama_cpp import default_context, kv_cache_bytes

    parallel = max(1, int(options.get("parallel") or config.parallel))
    return kv_cache_bytes(spec, (options.get("n_ctx") or default_context(spec)) * parallel)


def _dequantised_footprint(spec) -> float:
    """A GGUF file in transformers is dequantised to fp32, plus the runtime around it."""
    if spec.format != "gguf":
        return DEFAULT_FOOTPRINT
    bits = {2: 4.5, 3: 5.0, 7: 8.5, 8: 8.5, 1: 16.0, 0: 32.0}.get(spec.metadata.get("general.file_type"), 5.0)
    return 32 / bits * 1.5


#: llama.cpp's `general.file_type` values: how a GGUF file's weights are stored
GGUF_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                   11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
                   17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


def _gguf_precision(backend, spec) -> dict:
    stored = GGUF_FILE_TYPES.get(spec.metadata.get("general.file_type"))
    return {"precision": stored, "precision_reason": "as the GGUF file stores its weights" if stored else None}


def _probed_precision(backend, spec) -> dict:
    """The precision an encoder chose at load, and why (precision.py); none for the other models."""
    precision = getattr(backend, "precision", None)
    if precision is not None and hasattr(precision, "reason"):
        return {"precision": precision.name, "precision_reason": precision.reason}
    return {"precision": None, "precision_reason": None}


def _llama_prompt_reuse(backend, spec) -> dict:
    """How much of a slot's last prompt a new prompt may reuse (llama_batch.py)."""
    batch = getattr(backend, "batch", None)  # None: an embedding model, or closed
    if batch is None:
        return {}
    if batch.small_rows:
        return {"prompt_reuse": f"any prefix of prompts under {batch.small_rows} tokens, "
                                f"else whole batches of {batch.chunk}"}
    return {"prompt_reuse": f"whole batches of {batch.chunk} tokens"}


# The registry ----------------------------------------------------------------------------------------------
#: in the order "auto" tries them, and references recognise formats
BACKENDS: dict[str, BackendKind] = {kind.name: kind for kind in (
    BackendKind("llama_cpp", frozenset({("gguf", "*")}), frozenset({"generate", "embed", "rerank", "classify",
                                                                     "anomaly"}),
                ".gguf files", _create_llama, _import_llama, recognises=GGUF, batches=frozenset({"generate"}),
                context_bytes=_llama_context_bytes, precision=_gguf_precision, prompt_reuse=_llama_prompt_reuse),
    BackendKind("spacy", frozenset({("spacy", "*")}), frozenset({"ner", "classify"}),
                "spaCy pipeline folders", _create_spacy, _import_spacy, recognises=SPACY),
    BackendKind("rapidocr", frozenset({("rapidocr", "*")}), frozenset({"ocr", "document"}),
                "RapidOCR model folders", _create_rapidocr, _import_onnxruntime, recognises=RAPIDOCR),
    BackendKind("transformers", frozenset({("transformers", "*"), ("gguf", "generate")}),
                frozenset({"generate", "embed", "rerank", "classify", "ner", "anomaly"}),
                "Hugging Face model folders and GGUF generation models", _create_transformers, _import_torch,
                recognises=HF_FOLDER, footprint=_dequantised_footprint, precision=_probed_precision),
    BackendKind("onnx", frozenset({("transformers", "embed")}), frozenset({"embed", "rerank", "classify", "anomaly"}),
                "encoder embedding folders", _create_onnx, _import_onnxruntime, auto=False,
                precision=_probed_precision),
)}


def backend_kind(name: str) -> BackendKind:
    return BACKENDS[name]


def model_formats() -> list[ModelFormat]:
    """The formats the backends recognise, in the order references try them."""
    return [kind.recognises for kind in BACKENDS.values() if kind.recognises is not None]


def create(spec: "ModelSpec", backend: str, config: "RuntimeConfig", options: dict) -> "Backend":
    return BACKENDS[backend].create(spec, config, options, cpu_threads(config.threads))


def import_library(backend: str, device: str = "auto") -> None:
    """Import a backend's library (and start CUDA for a GPU load) before its first load is measured:
    one-time costs of the process (about 200 MB of RSS for torch and transformers, a few hundred MB of
    GPU memory for a CUDA context), not the footprint of the model being loaded."""
    try:
        BACKENDS[backend].library(device)
    except Exception:
        pass  # the load itself reports a missing library or device


def precision_status(entry: "LoadedModel") -> dict:
    """What precision a loaded model runs in, and why."""
    return {"precision": None, "precision_reason": None,
            **BACKENDS[entry.backend_name].precision(entry.backend, entry.spec)}


def prompt_reuse_status(entry: "LoadedModel") -> dict:
    """How a loaded model reuses prompts ({} where it does not)."""
    return BACKENDS[entry.backend_name].prompt_reuse(entry.backend, entry.spec)


def batches(backend: str, spec: "ModelSpec") -> bool:
    """Whether the backend decodes this model's generations together (its worker batches them)."""
    return spec.task in BACKENDS[backend].batches
