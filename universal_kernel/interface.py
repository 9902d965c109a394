"""What every runtime offers, whoever runs the work: this process, a Jupyter server over HTTP, a cluster.

The magics, the monitor and the benchmarks program against `InferenceRuntime` only. A runtime says
where its work runs (`where`), so a front door never asks which class it holds. Results are typed
dataclasses that every implementation returns alike; status is a typed dict (it travels as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol, TypedDict, runtime_checkable

import numpy as np

from .backends.base import GenerationParams
from .stats import RequestStats
from .streams import Completion

#: where a runtime's work runs: this process, a server reached over HTTP, or the workers of a cluster
Where = Literal["local", "server", "dask"]


# Results --------------------------------------------------------------------------------------
@dataclass
class EmbeddingResult:
    model: str
    vectors: np.ndarray  # float32, one row per input, in input order
    prompt_tokens: int
    stats: RequestStats


@dataclass
class RerankHit:
    index: int  # the document's position in the request
    score: float  # relevance in 0..1 for a cross-encoder; cosine in -1..1 for a bi-encoder
    document: str


@dataclass
class RerankResult:
    model: str
    hits: list[RerankHit]  # best first, `top_n` of them
    prompt_tokens: int
    stats: RequestStats


@dataclass
class Classification:
    label: str  # the best label
    score: float  # its probability
    scores: dict[str, float]  # every label's probability, best first


@dataclass
class ClassifyResult:
    model: str
    rows: list[Classification]  # one per input, in input order
    prompt_tokens: int
    stats: RequestStats


@dataclass
class Entity:
    text: str  # == the input's text[start:end]
    label: str
    start: int  # character offsets into the input
    end: int
    score: float


@dataclass
class NerResult:
    model: str
    rows: list[list[Entity]] = field(default_factory=list)  # the entities of each input, in input order
    prompt_tokens: int = 0
    stats: RequestStats | None = None


@dataclass
class OcrBox:
    x1: float  # pixels of the image (or of the page rendered at the OCR's resolution)
    y1: float
    x2: float
    y2: float
    text: str
    confidence: float


@dataclass
class OcrPage:
    index: int  # the input's position
    page: int  # 1 for an image; a PDF's page number, from 1
    text: str  # the lines read, top to bottom, joined by newlines
    confidence: float  # the mean confidence of the lines (0 when nothing was read)
    boxes: list[OcrBox] | None = None  # when asked for


@dataclass
class OcrResult:
    model: str
    pages: list[OcrPage]  # in input order, a PDF's pages in order
    stats: RequestStats | None = None


@dataclass
class AnomalyDetector:
    """A fitted detector, kept under its name."""

    name: str
    backend: str  # "isolation_forest" or "local_outlier_factor"
    n_samples: int
    n_features: int
    threshold: float  # scores at or above it are anomalies (from `contamination`)
    contamination: float
    columns: list[str] | None = None  # a DataFrame's numeric columns, checked when scoring
    text_model: str | None = None  # texts: the embedding model their vectors come from
    created_at: float = 0.0
    schema: dict[str, str] | None = None  # a table: each column's encoding (numeric, onehot, ordinal)


@dataclass
class AnomalyScores:
    name: str
    scores: np.ndarray  # float64 in 0..1, one per row, higher = more anomalous
    is_anomaly: np.ndarray  # bool, score >= threshold
    threshold: float
    stats: RequestStats | None = None
    raw_scores: np.ndarray | None = None  # the detector library's own score per row, higher = more anomalous


# Status ---------------------------------------------------------------------------------------
class ModelStatus(TypedDict, total=False):
    id: str
    backend: str
    device: str
    precision: str | None  # "fp32", "bf16", "fp16"; None where the files decide (GGUF, spaCy, ONNX)
    precision_reason: str | None
    task: str
    tasks: list[str]
    format: str
    size_bytes: int
    footprint_bytes: int
    keep_alive: float
    expires_in_s: float | None
    active: int
    queue_depth: int  # requests waiting plus those running
    running: bool
    sequences: int  # requests running now (a llama.cpp model decodes up to `parallel` generations together)
    parallel: int
    figures: dict


class RuntimeStatus(TypedDict, total=False):
    models: list[ModelStatus]
    memory: dict
    budget: dict
    recent: list[dict]
    loads: int
    evictions: int
    worker_failures: list[dict]  # models whose worker died: when, of what, and their reload
    memory_trend: dict  # the process RSS over the last minutes (memory_trend.py)


# The interface ------------------------------------------------------------------------------
class TextStream(Protocol):
    """A generation in progress: iterate for text pieces; closing it cancels; `result()` reads to the end."""

    model: str
    stats: RequestStats

    @property
    def text(self) -> str: ...

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...

    def result(self) -> Completion: ...


@runtime_checkable
class InferenceRuntime(Protocol):
    """What the local runtime, the HTTP client of a server and a cluster's runtime all offer."""

    #: where the work runs; front doors show it and choose by it (never by class name)
    where: Where
    default_generation_model: str
    default_embedding_model: str

    # generation and embeddings
    def stream(self, model: str | None = None, *, prompt: str | None = None, messages: list | None = None,
               params: GenerationParams | dict | None = None, backend: str = "auto",
               keep_alive: float | None = None) -> TextStream: ...

    def generate(self, model: str | None = None, **kwargs: Any) -> Completion: ...

    def embed(self, texts: list[str] | str, model: str | None = None, *, normalize: bool = True,
              backend: str = "auto", keep_alive: float | None = None) -> EmbeddingResult: ...

    # the other tasks
    def rerank(self, query: str, documents: list[str], model: str | None = None, top_n: int | None = None, *,
               backend: str = "auto", keep_alive: float | None = None, truncate: bool = False) -> RerankResult: ...

    def classify(self, texts: list[str] | str, model: str | None = None, labels: list[str] | None = None, *,
                 backend: str = "auto", keep_alive: float | None = None,
                 truncate: bool = False) -> ClassifyResult: ...

    def ner(self, texts: list[str] | str, model: str | None = None, *, backend: str = "auto",
            keep_alive: float | None = None, truncate: bool = False) -> NerResult: ...

    def ocr(self, images: Any, model: str | None = None, *, boxes: bool = False, backend: str = "auto",
            keep_alive: float | None = None) -> OcrResult: ...

    def anomaly_fit(self, name: str, data: Any, *, backend: str = "isolation_forest", contamination: float = 0.1,
                    model: str | None = None, schema: dict[str, str] | None = None) -> AnomalyDetector: ...

    def anomaly_score(self, name: str, data: Any, *, threshold: float | None = None) -> AnomalyScores: ...

    def anomaly_models(self) -> list[AnomalyDetector]: ...

    def anomaly_delete(self, name: str) -> bool: ...

    # models and status
    def status(self) -> RuntimeStatus: ...

    def models(self) -> list[dict]: ...

    def load(self, model: str | None = None, *, backend: str = "auto", keep_alive: float | None = None,
             task: str | None = None, **options: Any) -> dict: ...

    def unload(self, model: str | None = None, *, backend: str | None = None) -> Any: ...

    def alias(self, name: str, ref: str) -> Any: ...

    def subscribe(self, listener: Callable[[str, Any], None]) -> None: ...
