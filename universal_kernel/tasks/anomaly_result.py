"""What anomaly detection returns: a fitted detector's description, and the scores of rows under one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..stats import RequestStats


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
