"""Per-request figures and rolling per-model summaries."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import asdict, dataclass, field


@dataclass
class RequestStats:
    model: str
    backend: str
    kind: str  # the task: "generate", "embed", "rerank", "classify", "ner"
    created_at: float  # wall clock, for display
    queue_wait_s: float = 0.0
    load_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float | None = None
    total_s: float = 0.0
    finish_reason: str | None = None
    #: embedding rows computed by the model, and rows served from the embedding cache
    rows_computed: int = 0
    rows_cached: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


@dataclass
class RollingFigures:
    """The last `size` requests of one model, summarised on demand."""

    size: int = 50
    recent: deque = field(default_factory=deque)
    requests: int = 0
    cancelled: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stats: RequestStats) -> None:
        with self._lock:
            self.requests += 1
            if stats.finish_reason == "cancelled":
                self.cancelled += 1
            elif stats.finish_reason == "error":
                self.failed += 1
            self.recent.append(stats)
            while len(self.recent) > self.size:
                self.recent.popleft()

    def summary(self) -> dict:
        with self._lock:
            recent = list(self.recent)
        return {
            "requests": self.requests,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "median_queue_wait_s": _median(s.queue_wait_s for s in recent),
            "median_ttft_s": _median(s.ttft_s for s in recent),
            "median_tokens_per_s": _median(s.tokens_per_s for s in recent),
            "median_total_s": _median(s.total_s for s in recent),
            "last": recent[-1].as_dict() if recent else None,
        }
