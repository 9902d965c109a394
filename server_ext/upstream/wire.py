"""The request and response shapes of LlamaFarm's Universal Runtime (`runtimes/universal/`: its
`api_types/` and the dicts its routers return), field for field, as pydantic types.

Requests ignore unknown fields (as upstream's FastAPI models do). Where upstream's request takes a
field that this runtime cannot honour, the field is here with upstream's default, and the door
(`door.py`) answers 400 when a request sets it to something else: a value is never silently dropped.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class _UpstreamRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, populate_by_name=True)


class _OmitsUnset(BaseModel):
    """A row whose optional keys upstream adds only when asked for (`document`, `boxes`): left out when
    None rather than sent as null. Other None fields (the fit result's `encoder`) are sent as null, as
    upstream does."""

    OMITTED: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        data = handler(self)
        for key in self.OMITTED:
            if data.get(key) is None:
                data.pop(key, None)
        return data


# Rerank (api_types/nlp.py RerankRequest / RerankResult / RerankResponse) ----------------------------------
class RerankRequest(_UpstreamRequest):
    model: str
    query: str
    documents: list[str]
    top_k: Optional[int] = None
    return_documents: bool = True


class RerankResult(_OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("document",)
    index: int
    relevance_score: float
    document: Optional[str] = None  # only when return_documents (the key is left out otherwise)


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[RerankResult]
    model: str
    usage: Usage


# Classify and NER (api_types/nlp.py; routers/embeddings/router.py) ---------------------------------------
class ClassifyRequest(_UpstreamRequest):
    model: str
    texts: list[str]
    max_length: Optional[int] = None
    # extensions: zero-shot labels (an embedding or chat model needs them), and truncation at the model's limit
    labels: Optional[list[str]] = None
    truncate: bool = False


class ClassifyResult(BaseModel):
    index: int
    label: str
    score: float
    all_scores: dict[str, float]


class TextsUsage(BaseModel):
    texts_processed: int


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ClassifyResult]
    total_count: int
    model: str
    usage: TextsUsage


class NerRequest(_UpstreamRequest):
    model: str
    texts: list[str]
    max_length: Optional[int] = None
    truncate: bool = False  # extension, as for classify


class EntityResult(BaseModel):
    text: str
    label: str
    start: int
    end: int
    score: float


class NerResult(BaseModel):
    index: int
    entities: list[EntityResult]


class NerResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[NerResult]
    model: str
    usage: TextsUsage


# OCR (routers/ocr/types.py OCRRequest; the dict routers/ocr/router.py returns) -----------------------------
class OcrRequest(_UpstreamRequest):
    model: Optional[str] = None  # upstream's default engine is surya; omitted here means this runtime's own
    images: Optional[list[str]] = None
    file_id: Optional[str] = None
    languages: Optional[list[str]] = None
    return_boxes: bool = False


class OcrBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float
    text: str
    confidence: float


class OcrResult(_OmitsUnset):
    OMITTED: ClassVar[tuple[str, ...]] = ("boxes",)
    index: int
    text: str
    confidence: float
    boxes: Optional[list[OcrBox]] = None  # only when return_boxes (the key is left out otherwise)


class ImagesUsage(BaseModel):
    images_processed: int


class OcrResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OcrResult]
    model: str
    usage: ImagesUsage


# Anomaly (api_types/anomaly.py; the dicts routers/anomaly/router.py returns) ------------------------------
Normalization = Literal["standardization", "zscore", "raw"]


class AnomalyFitRequest(_UpstreamRequest):
    model: str = "default"
    backend: str = "isolation_forest"
    data: Optional[Union[list[list[float]], list[dict[str, Any]]]] = None
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")
    contamination: float = Field(default=0.1, gt=0, le=0.5)
    epochs: int = 100  # autoencoder only: no autoencoder here, so never used
    batch_size: int = 32
    normalization: Normalization = "standardization"
    overwrite: bool = True
    training_file: Optional[str] = None
    polars_config: Optional[dict[str, Any]] = None


class AnomalyFitResponse(BaseModel):
    object: Literal["fit_result"] = "fit_result"
    model: str
    backend: str
    samples_fitted: int
    training_time_ms: float
    model_params: dict[str, Any]
    encoder: Optional[dict[str, Any]] = None
    status: Literal["fitted"] = "fitted"


class AnomalyScoreRequest(_UpstreamRequest):
    model: str = "default"
    backend: str = "isolation_forest"
    data: Union[list[list[float]], list[dict[str, Any]]]
    schema_: Optional[dict[str, str]] = Field(default=None, alias="schema")
    threshold: Optional[float] = None
    normalization: Normalization = "standardization"
    explain: bool = False
    feature_names: Optional[list[str]] = None


class AnomalyScoreResult(BaseModel):
    index: int
    score: float
    is_anomaly: bool
    raw_score: float


class AnomalySummary(BaseModel):
    total_points: int
    anomaly_count: int
    anomaly_rate: float
    threshold: float


class AnomalyScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[AnomalyScoreResult]
    total_count: int
    model: str
    backend: str
    summary: AnomalySummary


# Health (routers/health/router.py) -------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: Literal["healthy"] = "healthy"
    device: dict[str, Any]
    loaded_models: list[str]
    timestamp: str
    pid: int
