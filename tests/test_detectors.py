"""The anomaly detectors beyond isolation forest and LOF (universal_kernel/tasks/anomaly_detectors.py):
scikit-learn's OneClassSVM and pyod's ECOD, COPOD and HBOS. Each one's raw scores equal the library's
own, run by hand on the same (standardised) data; `raw_score`, `summary` and a per-request `threshold`
through the runtime, HTTP and the client runtime.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.client import RemoteRuntime
from universal_kernel.errors import InvalidRequest

from .conftest import TOKEN
from .magics_support import ip, run  # noqa: F401
from .test_anomaly import COLUMNS, planted

NEW = ["one_class_svm", "ecod", "copod", "hbos"]


def by_hand(backend: str, contamination: float):
    """The library's detector, built as its documentation shows, with the parameters the task states."""
    if backend == "one_class_svm":
        from sklearn.svm import OneClassSVM

        return OneClassSVM(nu=contamination)
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.hbos import HBOS

    return {"ecod": ECOD, "copod": COPOD, "hbos": HBOS}[backend](contamination=contamination)


def library_raw(detector, matrix: np.ndarray) -> np.ndarray:
    """Higher = more anomalous, as the library gives it: pyod's decision_function, scikit-learn's -score_samples."""
    return detector.decision_function(matrix) if hasattr(detector, "decision_scores_") \
        else -detector.score_samples(matrix)


@pytest.fixture(scope="module")
def data():
    return planted()[0]


@pytest.fixture(scope="module")
def fresh():
    """New rows: 20 gaussian ones and 4 far away, in the training columns' order."""
    rng = np.random.default_rng(7)
    return np.vstack([rng.normal(size=(20, 4)), rng.normal(size=(4, 4)) + 8.0])


@pytest.fixture
def local(tmp_path):
    rt = Runtime(RuntimeConfig(anomaly_folder=tmp_path / "anomaly"), reaper=False)
    yield rt
    rt.close()


@pytest.mark.parametrize("backend", NEW)
def test_raw_scores_equal_the_librarys_own(local, data, fresh, backend, tmp_path):
    detector = local.anomaly_fit("d", data, backend=backend, contamination=0.05)
    assert detector.backend == backend

    scaler = StandardScaler().fit(data.to_numpy())
    reference = by_hand(backend, 0.05).fit(scaler.transform(data.to_numpy()))
    expected = library_raw(reference, scaler.transform(fresh))
    result = local.anomaly_score("d", fresh)
    np.testing.assert_allclose(result.raw_scores, expected, rtol=1e-9, atol=1e-12)

    # the training rows: the library's own scores of the data it was fitted on
    training = local.anomaly_score("d", data)
    own = reference.decision_scores_ if hasattr(reference, "decision_scores_") \
        else library_raw(reference, scaler.transform(data.to_numpy()))
    np.testing.assert_allclose(training.raw_scores, own, rtol=1e-9, atol=1e-12)

    # 0..1 scores, monotone in the raw ones; the planted rows score highest; at most ceil(5%) of training flagged
    assert ((0 <= result.scores) & (result.scores <= 1)).all()
    order = np.argsort(result.raw_scores, kind="stable")
    assert (np.diff(result.scores[order]) >= -1e-12).all()
    assert set(np.argsort(training.scores)[-10:]) == set(range(500, 510))
    assert training.is_anomaly.sum() <= np.ceil(0.05 * len(data)) and training.is_anomaly[500:].all()
    assert result.is_anomaly[20:].all()

    # another process's runtime reads the same file and scores the same
    other = Runtime(RuntimeConfig(anomaly_folder=tmp_path / "anomaly"), reaper=False)
    try:
        np.testing.assert_array_equal(other.anomaly_score("d", fresh).raw_scores, result.raw_scores)
    finally:
        other.close()


def test_a_threshold_per_request(local, data, fresh):
    detector = local.anomaly_fit("t", data, backend="ecod", contamination=0.05)
    own = local.anomaly_score("t", fresh)
    assert own.threshold == detector.threshold
    loose = local.anomaly_score("t", fresh, threshold=0.5)
    assert loose.threshold == 0.5 and (loose.is_anomaly == (loose.scores >= 0.5)).all()
    assert loose.is_anomaly.sum() > own.is_anomaly.sum()  # a lower bar flags more of the gaussian rows
    np.testing.assert_array_equal(loose.scores, own.scores)
    for bad in (1.5, -0.1, True, "high"):
        with pytest.raises(InvalidRequest) as refused:
            local.anomaly_score("t", fresh, threshold=bad)
        assert refused.value.param == "threshold"


def test_raw_score_summary_and_threshold_over_http_and_the_client(runtime, server, data, fresh):
    name = f"detectors-{uuid.uuid4().hex[:10]}"
    try:
        response = server.post("universal/v1/anomaly/fit", {"model": name, "backend": "hbos", "contamination": 0.05,
                                                             "data": data.to_dict(orient="records")})
        assert response.status_code == 200, response.text
        assert response.json()["backend"] == "hbos"
        local = runtime.anomaly_score(name, fresh, threshold=0.6)  # the kernel scores what the server fitted
        rows = [dict(zip(COLUMNS, map(float, row))) for row in fresh]
        body = server.post("universal/v1/anomaly/score", {"model": name, "data": rows, "threshold": 0.6}).json()
        assert body["threshold"] == 0.6
        assert [row["raw_score"] for row in body["data"]] == pytest.approx(local.raw_scores.tolist(), rel=1e-12)
        assert [row["is_anomaly"] for row in body["data"]] == local.is_anomaly.tolist()
        count = int(local.is_anomaly.sum())
        assert body["summary"] == {"total_points": len(fresh), "anomaly_count": count,
                                   "anomaly_rate": count / len(fresh), "threshold": 0.6}

        far = RemoteRuntime(server.url, TOKEN).anomaly_score(name, fresh, threshold=0.6)
        np.testing.assert_allclose(far.raw_scores, local.raw_scores, rtol=1e-12)
        assert far.is_anomaly.tolist() == local.is_anomaly.tolist() and far.threshold == 0.6

        bad = server.post("universal/v1/anomaly/score", {"model": name, "data": rows, "threshold": 2})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "threshold"
    finally:
        runtime.anomaly_delete(name)


# Categorical columns ----------------------------------------------------------------------------------------
def _table(seed: int, n: int):
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame({"amount": rng.normal(100, 10, n), "duration": rng.normal(5, 1, n),
                         "city": rng.choice(["Paris", "Lyon", "Nice"], n),
                         "tier": rng.choice(["bronze", "silver", "gold"], n)})


def _hand_built(kinds: dict[str, str]):
    """The ColumnTransformer as the scikit-learn documentation builds one, for these columns."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    return ColumnTransformer([
        ("numeric", StandardScaler(), [c for c, k in kinds.items() if k == "numeric"]),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
         [c for c, k in kinds.items() if k == "onehot"]),
        ("ordinal", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
         [c for c, k in kinds.items() if k == "ordinal"]),
    ], sparse_threshold=0)


@pytest.mark.parametrize("backend", ["isolation_forest", "ecod"])
def test_categorical_columns_through_a_column_transformer(local, backend):
    from sklearn.ensemble import IsolationForest

    train, new = _table(1, 300), _table(2, 12)
    new.loc[0, "city"] = "Marseille"  # a category never seen in training: one-hot zeros
    new.loc[1, "amount"] = 400.0  # far out
    detector = local.anomaly_fit("mixed", train, backend=backend, schema={"tier": "ordinal"})
    kinds = {"amount": "numeric", "duration": "numeric", "city": "onehot", "tier": "ordinal"}
    assert detector.schema == kinds and detector.columns == list(kinds) and detector.n_features == 4

    encode = _hand_built(kinds).fit(train)
    reference = IsolationForest(n_estimators=200, random_state=0) if backend == "isolation_forest" \
        else by_hand(backend, 0.1)
    reference.fit(encode.transform(train))
    expected = library_raw(reference, encode.transform(new[list(reversed(new.columns))][list(kinds)]))
    result = local.anomaly_score("mixed", new[list(reversed(new.columns))])  # columns in any order
    np.testing.assert_allclose(result.raw_scores, expected, rtol=1e-9, atol=1e-12)
    assert result.scores[1] == result.scores.max()

    with pytest.raises(InvalidRequest, match="missing \\['tier'\\]"):
        local.anomaly_score("mixed", new.drop(columns="tier"))
    with pytest.raises(InvalidRequest, match="missing values in column 'city'"):
        local.anomaly_score("mixed", new.assign(city=None))


def test_categorical_rows_over_http_equal_the_runtime(runtime, server):
    train, new = _table(3, 200), _table(4, 6)
    name = f"mixed-{uuid.uuid4().hex[:10]}"
    try:
        fitted = server.post("universal/v1/anomaly/fit", {"model": name, "data": train.to_dict(orient="records"),
                                                          "schema": {"tier": "ordinal"}})
        assert fitted.status_code == 200, fitted.text
        assert fitted.json()["schema"] == {"amount": "numeric", "duration": "numeric", "city": "onehot",
                                           "tier": "ordinal"}
        local = runtime.anomaly_score(name, new)
        body = server.post("universal/v1/anomaly/score", {"model": name, "data": new.to_dict(orient="records")}).json()
        assert [row["raw_score"] for row in body["data"]] == pytest.approx(local.raw_scores.tolist(), rel=1e-12)
        far = RemoteRuntime(server.url, TOKEN)
        np.testing.assert_allclose(far.anomaly_score(name, new).raw_scores, local.raw_scores, rtol=1e-12)
    finally:
        runtime.anomaly_delete(name)


def test_magic_takes_a_dataframe_with_text_columns(ip, local):
    mixed = _table(5, 120)
    ip.user_ns["mixed"] = mixed
    captured, result = run(ip, "%anomaly mixed --backend copod")
    assert result.success, result.error_in_exec
    local.anomaly_fit("same", mixed, backend="copod")  # city and tier one-hot, as the magic's runtime does
    np.testing.assert_allclose(result.result.to_numpy(), local.anomaly_score("same", mixed).scores, rtol=1e-12)
    assert list(result.result.index) == list(mixed.index)
