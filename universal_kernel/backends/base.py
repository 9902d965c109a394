"""What every backend offers, and the request types they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..errors import InvalidRequest, WrongTask

if TYPE_CHECKING:
    from ..model_spec import ModelSpec

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class GenerationParams:
    max_tokens: int | None = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    #: None, {"type": "json_object"} or {"type": "json_schema", "schema": {...}}; and for tool calls with
    #: tool_choice auto, {"type": "json_schema_or_text", "schema": {...}}: an object of the schema, or
    #: text that does not start with "{" (grammar-constrained on llama_cpp only)
    response_format: dict | None = None
    #: None: no log-probabilities; 0..20: each token's log-probability and that many top alternatives
    logprobs: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if not 0 <= self.temperature <= 2:
            raise InvalidRequest("temperature must be between 0 and 2", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequest("top_logprobs must be between 0 and 20", param="top_logprobs")
        if self.response_format and self.response_format.get("type") not in ("text", "json_object", "json_schema",
                                                                                  "json_schema_or_text"):
            raise InvalidRequest("response_format.type must be text, json_object or json_schema",
                                 param="response_format")


@dataclass
class GenerationOutcome:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    #: when asked for (GenerationParams.logprobs): per token of the text, {"token", "logprob", "bytes",
    #: "top_logprobs": [{"token", "logprob", "bytes"}]}; the tokens concatenate to the text
    logprobs: list[dict] | None = None


#: called with each new piece of text as it is generated
Emit = Callable[[str], None]
#: returns True once the caller has gone away
IsCancelled = Callable[[], bool]


class Backend(ABC):
    """A loaded model. One instance serves one generation at a time (the scheduler ensures it)."""

    #: the engine that computes: its declaration's name in `registry.BACKENDS` (an "onnx" load that ONNX
    #: Runtime refused is served by a "transformers" backend)
    name: str = "base"
    device: str = "cpu"

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    # Generation -----------------------------------------------------------------------------
    def generate(self, prompt: str | None, messages: list[dict] | None, params: GenerationParams,
                 emit: Emit, cancelled: IsCancelled) -> GenerationOutcome:
        raise WrongTask(f"{self.spec.id!r} is an embedding model; it cannot generate text")

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    # Embedding ------------------------------------------------------------------------------
    def embed(self, texts: list[str], normalize: bool = True) -> tuple[Any, int]:
        """Return (float32 array, one row per text; prompt token count)."""
        raise WrongTask(f"{self.spec.id!r} generates text; use an embedding model to embed")

    def vector_settings(self) -> dict:
        """What this backend does that changes a model's vectors (pooling, length, precision...): with its
        `name`, part of the embedding cache's key (tasks/embedding_store.py)."""
        return {}

    # The other tasks: a backend overrides what its model can do ------------------------------
    #: the most tokens one input may have (None: no limit known); longer inputs are refused unless truncated
    max_input_tokens: int | None = None

    def classify(self, texts: list[str], *, truncate: bool = False) -> tuple[list[dict[str, float]], int]:
        """The model's own classes: per text, {label: probability} (best first); and the prompt token count."""
        raise WrongTask(f"{self.spec.id!r} has no classifier head")

    def classify_labels(self, texts: list[str], labels: list[str], *,
                        truncate: bool = False) -> tuple[list[dict[str, float]], int]:
        """Zero-shot on a chat model: per text, {label: probability} over the given labels (sums to 1)."""
        raise WrongTask(f"{self.spec.id!r} cannot choose between labels")

    def score_pairs(self, query: str, documents: list[str], *, truncate: bool = False) -> tuple[list[float], int]:
        """A cross-encoder's relevance of each document to the query, in 0..1; and the prompt token count."""
        raise WrongTask(f"{self.spec.id!r} is no cross-encoder")

    def ner(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[dict]], int]:
        """Per text, its entities `{text, label, start, end, score}` with character offsets into the text;
        and the prompt token count."""
        raise WrongTask(f"{self.spec.id!r} finds no entities")

    def read_images(self, images: list, *, boxes: bool = False) -> list[dict]:
        """OCR: per image (RGB uint8 array), `{text, confidence, boxes}`: its lines top to bottom joined by
        newlines, their mean confidence (0 when nothing was read) and, if asked, `[{x1, y1, x2, y2, text,
        confidence}]` in the image's pixels (else None)."""
        raise WrongTask(f"{self.spec.id!r} reads no text from images")

    @abstractmethod
    def close(self) -> None:
        """Free everything the model holds."""


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class StopMatcher:
    """Cuts streamed text at the first stop string, holding back text that may start one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Return the text that is safe to emit now."""
        if not self.stops:
            return piece
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
