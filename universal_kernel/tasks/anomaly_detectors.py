"""The detectors an anomaly detector can be built on, by name, and their raw outlyingness.

- scikit-learn: `isolation_forest` (IsolationForest), `local_outlier_factor` (LocalOutlierFactor,
  novelty=True), `one_class_svm` (OneClassSVM, nu = contamination: the share of training rows it
  may leave outside its boundary);
- pyod: `ecod` (ECOD), `copod` (COPOD), `hbos` (HBOS): parameter-free or nearly, fast, and they
  give per-feature outlyingness.

Each is the last step of a scikit-learn `Pipeline` whose first step standardises numeric columns
("passthrough" for embeddings). The raw outlyingness (higher = more anomalous) is the library's own:
-score_samples for scikit-learn's detectors, `decision_function` for pyod's (which already points
that way). pyod's ECOD and COPOD score new rows against their training rows (the ECDFs are taken
over training plus the scored rows, as the library does); they keep the training rows in the file.
Libraries are imported only when a detector is built or scored.
"""

from __future__ import annotations

import numpy as np

SKLEARN = ("isolation_forest", "local_outlier_factor", "one_class_svm")
PYOD = ("ecod", "copod", "hbos")
BACKENDS = SKLEARN + PYOD
LOF_NEIGHBORS = 20


def min_rows(backend: str) -> int:
    return LOF_NEIGHBORS + 1 if backend == "local_outlier_factor" else 2


def detector(backend: str, contamination: float):
    """The unfitted detector step for `backend` (a name in BACKENDS)."""
    if backend == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=200, random_state=0)
    if backend == "local_outlier_factor":
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=LOF_NEIGHBORS, novelty=True)
    if backend == "one_class_svm":
        from sklearn.svm import OneClassSVM

        return OneClassSVM(nu=contamination)  # the rbf kernel, gamma="scale": the library's defaults
    if backend == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD(contamination=contamination)
    if backend == "copod":
        from pyod.models.copod import COPOD

        return COPOD(contamination=contamination)
    if backend == "hbos":
        from pyod.models.hbos import HBOS

        return HBOS(contamination=contamination)
    raise ValueError(backend)  # the task checks the name first


def _is_pyod(step) -> bool:
    return type(step).__module__.startswith("pyod.")


def outlyingness(pipeline, matrix: np.ndarray) -> np.ndarray:
    """The library's own raw score of each row, oriented so that higher is more anomalous."""
    step = pipeline[-1]
    if _is_pyod(step):
        return np.asarray(step.decision_function(pipeline[:-1].transform(matrix)), dtype=np.float64)
    return -pipeline.score_samples(matrix)  # scikit-learn: lower = more abnormal; here higher is


def training_outlyingness(pipeline, matrix: np.ndarray) -> np.ndarray:
    """The training rows' raw scores as the library gives them for the data it was fitted on."""
    step = pipeline[-1]
    if _is_pyod(step):
        return np.asarray(step.decision_scores_, dtype=np.float64)
    if hasattr(step, "negative_outlier_factor_"):
        # LOF: each training row's own LOF, itself left out of its neighbours (score_samples would count it)
        return -np.asarray(step.negative_outlier_factor_, dtype=np.float64)
    return outlyingness(pipeline, matrix)
