"""Anomaly detection (SPEC §7) on real data: planted outliers among gaussian rows, odd sentences among
football ones (over all-MiniLM-L6-v2), through the runtime, HTTP, the client runtime and %anomaly;
detector files shared between runtimes, and files this project did not write never unpickled.

The session runtime and the session `jupyter server` both use the default anomaly folder (the server's
process inherits this environment, and neither sets UNIVERSAL_KERNEL_ANOMALY_FOLDER), so a detector
fitted by one is scored by the other; those tests use unique names and delete them afterwards.
"""

from __future__ import annotations

import pickle
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from IPython.core.error import UsageError

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.client import RemoteRuntime
from universal_kernel.errors import InvalidRequest, ModelNotFound, ReferenceRefused
from universal_kernel.magics import get_magics

from .conftest import MINILM, TOKEN
from .magics_support import ip, run  # noqa: F401

COLUMNS = ["a", "b", "c", "d"]
TEAMS = ["Arsenal", "Liverpool", "Barcelona", "Juventus", "Bayern", "Ajax", "Celtic", "Porto"]
ACTIONS = ["beat {other} two goals to one in a tense league match",
           "drew with {other} after a late penalty in the second half",
           "lost to {other} when their goalkeeper was sent off",
           "signed a new striker before the derby against {other}",
           "scored a header from a corner to knock {other} out of the cup"]
ODD = ["Dissolve 2 g of copper sulfate in water, then compute its molecular orbitals with a Hartree-Fock basis set.",
       "Recipe: simmer the benzene ring's pi electrons gently and season with density functional theory.",
       "To bake a quantum chemistry souffle, whisk the Schrodinger equation until the wavefunction collapses."]


def football() -> list[str]:
    sentences = []
    for i, team in enumerate(TEAMS):
        for j, action in enumerate(ACTIONS):
            sentences.append(f"{team} {action.format(other=TEAMS[(i + j + 1) % len(TEAMS)])}.")
    return sentences  # 40


def planted(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """500 rows of 4 gaussian features and, at positions 500..509, 10 rows far away from them."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(500, 4))
    far = rng.normal(size=(10, 4)) + rng.choice([-7.0, 7.0], size=(10, 4))
    return pd.DataFrame(np.vstack([normal, far]), columns=COLUMNS), np.arange(500, 510)


@pytest.fixture(scope="module")
def data():
    return planted()[0]


@pytest.fixture
def local(tmp_path):
    """A runtime of its own, on a fresh anomaly folder (numeric data needs no model)."""
    rt = Runtime(RuntimeConfig(anomaly_folder=tmp_path / "anomaly"), reaper=False)
    yield rt
    rt.close()


@pytest.fixture
def kept(runtime):
    """Unique names in the shared folder (the session runtime's and the server's), deleted afterwards."""
    made = []

    def name(prefix: str = "test") -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield name
    for made_name in made:
        runtime.anomaly_delete(made_name)


def remote(server) -> RemoteRuntime:
    return RemoteRuntime(server.url, TOKEN)


# Quality --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["isolation_forest", "local_outlier_factor"])
def test_planted_outliers_score_highest_and_contamination_sets_the_threshold(local, data, backend):
    detector = local.anomaly_fit("planted", data, backend=backend, contamination=0.05)
    assert (detector.n_samples, detector.n_features, detector.columns) == (510, 4, COLUMNS)
    result = local.anomaly_score("planted", data)
    assert result.scores.dtype == np.float64 and ((result.scores >= 0) & (result.scores <= 1)).all()
    top15 = set(np.argsort(-result.scores)[:15].tolist())
    assert len(top15 & set(range(500, 510))) >= 8
    assert abs(result.is_anomaly.mean() - 0.05) <= 0.02  # about `contamination` of the training rows
    assert (result.is_anomaly == (result.scores >= detector.threshold)).all()

    # new rows: far ones are flagged and more anomalous the farther they are; central ones are not
    fresh = pd.DataFrame([[0, 0, 0, 0], [0.2, -0.1, 0.1, 0], [9, 9, -9, 9], [15, 15, -15, 15]], columns=COLUMNS)
    new = local.anomaly_score("planted", fresh)
    assert new.is_anomaly.tolist() == [False, False, True, True]
    assert new.scores[3] >= new.scores[2] > new.scores[0]


def test_texts_unlike_the_others_score_highest(runtime, kept):
    texts = football() + ODD
    name = kept("texts")
    detector = runtime.anomaly_fit(name, texts, model=MINILM)
    assert detector.text_model == MINILM and detector.n_features == 384 and detector.columns is None
    scores = runtime.anomaly_score(name, texts).scores
    assert set(np.argsort(-scores)[:3].tolist()) == {40, 41, 42}
    lof = kept("texts-lof")
    runtime.anomaly_fit(lof, texts, backend="local_outlier_factor")  # the default embedding model
    assert set(np.argsort(-runtime.anomaly_score(lof, texts).scores)[:3].tolist()) == {40, 41, 42}


# One detector through every door ----------------------------------------------------------------
def test_the_same_detector_through_runtime_http_client_and_magic(runtime, server, kept, ip, data):
    name = kept("doors")
    runtime.anomaly_fit(name, data)  # the kernel fits; the server scores from the same folder
    local_scores = runtime.anomaly_score(name, data)

    response = server.post("universal/v1/anomaly/score", {"model": name, "data": data.to_dict(orient="records")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body["data"]] == list(range(len(data)))
    assert np.allclose([row["score"] for row in body["data"]], local_scores.scores)
    assert [row["is_anomaly"] for row in body["data"]] == local_scores.is_anomaly.tolist()

    client = remote(server)
    assert np.allclose(client.anomaly_score(name, data).scores, local_scores.scores)
    assert np.allclose(client.anomaly_score(name, data.to_numpy()).scores, local_scores.scores)

    ip.user_ns["df"] = data.set_index(data.index + 1000)
    captured, result = run(ip, f"%anomaly df --model {name}")
    assert result.success, result.error_in_exec
    series = result.result
    assert series.name == "anomaly_score" and list(series.index) == list(data.index + 1000)
    assert np.allclose(series.to_numpy(), local_scores.scores)
    get_magics(ip).remote_runtime(server.url, TOKEN)
    captured, result = run(ip, f"%anomaly df --model {name} --server")
    assert result.success, result.error_in_exec
    assert "(server)" in captured.stdout and np.allclose(result.result.to_numpy(), local_scores.scores)


def test_fitted_over_http_scored_in_the_kernel_listed_and_deleted(runtime, server, kept):
    name = kept("http")
    texts = football() + ODD
    response = server.post("universal/v1/anomaly/fit", {"model": name, "data": texts, "contamination": 0.1,
                                                         "embedding_model": MINILM})
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"model", "n_samples", "n_features", "threshold"} <= set(body)
    assert (body["model"], body["n_samples"], body["n_features"]) == (name, 43, 384)
    assert 0 < body["threshold"] <= 1

    local_scores = runtime.anomaly_score(name, texts).scores  # the server fitted; the kernel scores
    client = remote(server)
    assert np.allclose(client.anomaly_score(name, texts).scores, local_scores, atol=1e-6)
    assert set(np.argsort(-local_scores)[:3].tolist()) == {40, 41, 42}

    listed = server.get("universal/v1/anomaly/models").json()["data"]
    assert any(entry["model"] == name and entry["embedding_model"] == MINILM for entry in listed)
    assert name in {d.name for d in client.anomaly_models()}
    deleted = requests.delete(f"{server.url}universal/v1/anomaly/models/{name}",
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert deleted.status_code == 200 and deleted.json() == {"model": name, "deleted": True}
    assert name not in {d.name for d in runtime.anomaly_models()}
    assert client.anomaly_delete(name) is False
    missing = server.post("universal/v1/anomaly/score", {"model": name, "data": texts})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_client_fit_keeps_dataframe_columns(server, kept, data):
    client = remote(server)
    name = kept("client")
    detector = client.anomaly_fit(name, data, backend="local_outlier_factor", contamination=0.2)
    assert (detector.backend, detector.columns, detector.contamination) == ("local_outlier_factor", COLUMNS, 0.2)
    with pytest.raises(InvalidRequest, match="columns"):
        client.anomaly_score(name, data.rename(columns={"a": "z"}))


# Persistence and trust ---------------------------------------------------------------------------------
def test_a_detector_fitted_by_one_runtime_is_scored_by_another(tmp_path, data):
    folder = tmp_path / "shared"
    first = Runtime(RuntimeConfig(anomaly_folder=folder), reaper=False)
    second = Runtime(RuntimeConfig(anomaly_folder=folder), reaper=False)
    try:
        first.anomaly_fit("shared", data)
        assert np.array_equal(first.anomaly_score("shared", data).scores, second.anomaly_score("shared", data).scores)
        assert [d.name for d in second.anomaly_models()] == ["shared"]
        assert (folder / ".key").stat().st_mode & 0o777 == 0o600
        assert second.anomaly_delete("shared") and first.anomaly_models() == []
    finally:
        first.close()
        second.close()


class Planted:
    """A pickle that, if it were ever unpickled, would create its marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["tampered", "replaced", "foreign"])
def test_files_this_project_did_not_write_are_refused_not_unpickled(local, data, tmp_path, how):
    folder = local.config.anomaly_folder
    marker = tmp_path / "unpickled"
    local.anomaly_fit("kept", data)
    if how == "tampered":  # one byte changed
        payload = bytearray((folder / "kept.pickle").read_bytes())
        payload[len(payload) // 2] ^= 0xFF
        (folder / "kept.pickle").write_bytes(bytes(payload))
        name = "kept"
    elif how == "replaced":  # a legitimate detector's file swapped for a hostile pickle
        (folder / "kept.pickle").write_bytes(pickle.dumps(Planted(marker)))
        name = "kept"
    else:  # a file dropped in the folder that the manifest never signed
        (folder / "dropped.pickle").write_bytes(pickle.dumps(Planted(marker)))
        name = "dropped"
    with pytest.raises(ReferenceRefused, match="not written by universal-kernel"):
        local.anomaly_score(name, data)
    assert not marker.exists()
    assert [d.name for d in local.anomaly_models()] == ["kept"]  # listing reads the manifest only


def test_a_foreign_file_is_refused_by_the_server_too(runtime, server, kept, tmp_path):
    name = kept("foreign")
    marker = tmp_path / "unpickled-by-server"
    folder = Path(runtime.config.anomaly_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pickle").write_bytes(pickle.dumps(Planted(marker)))
    response = server.post("universal/v1/anomaly/score", {"model": name, "data": [[1.0, 2.0]]})
    assert response.status_code == 400 and "not written by universal-kernel" in response.json()["error"]["message"]
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "a\0b", "", ".hidden", "..", "x" * 200])
def test_names_that_could_leave_the_folder_are_refused(local, data, name):
    with pytest.raises(ReferenceRefused):
        local.anomaly_fit(name, data)
    with pytest.raises(ReferenceRefused):
        local.anomaly_score(name, data)
    with pytest.raises(ReferenceRefused):
        local.anomaly_delete(name)
    assert not (local.config.anomaly_folder.parent / "x.pickle").exists()


def test_names_are_refused_over_http(server):
    response = server.post("universal/v1/anomaly/fit", {"model": "../escape", "data": [[1.0], [2.0]]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    response = requests.delete(server.url + "universal/v1/anomaly/models/..%2Fescape",
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_refused"


# Bad input ----------------------------------------------------------------------------------------------
def test_bad_input_is_a_clear_invalid_request(local, data):
    def refused(match, *args, **kwargs) -> InvalidRequest:
        with pytest.raises(InvalidRequest, match=match) as info:
            local.anomaly_fit(*args, **kwargs)
        return info.value

    mixed = data.assign(city="Paris")
    assert refused("encodings offered are numeric, onehot and ordinal", "m", mixed,
                   schema={"city": "hash"}).param == "schema"  # a text column is one-hot encoded unless told
    holes = data.copy()
    holes.iloc[3, 1] = np.nan
    holes.iloc[7, 1] = np.nan
    holes.iloc[9, 3] = np.nan
    assert "3 missing" in str(refused(r"3 missing .* in b, d", "m", holes))
    refused("at least 2 rows", "m", data.head(1))
    refused("0 rows of 4 columns", "m", data.head(0))
    refused(r"at least 21 rows \(n_neighbors=20", "m", data.head(20), backend="local_outlier_factor")
    assert refused("contamination", "m", data, contamination=0).param == "contamination"
    refused("contamination", "m", data, contamination=0.6)
    assert refused("unknown anomaly backend", "m", data, backend="svm").param == "backend"
    refused("not a number", "m", [[1.0, "2"], [3.0, 4.0]])
    refused("mixes texts", "m", ["a text", 3.0])

    local.anomaly_fit("m", data)
    with pytest.raises(InvalidRequest, match=r"missing \['d'\], unexpected \['e'\]"):
        local.anomaly_score("m", data.rename(columns={"d": "e"}))
    with pytest.raises(InvalidRequest, match="3 columns; detector 'm' was fitted on 4"):
        local.anomaly_score("m", data.to_numpy()[:, :3])
    with pytest.raises(InvalidRequest, match="fitted on numeric columns; data has texts"):
        local.anomaly_score("m", ["a text"])
    reordered = local.anomaly_score("m", data[COLUMNS[::-1]]).scores  # columns are matched by name
    assert np.array_equal(reordered, local.anomaly_score("m", data).scores)
    with pytest.raises(ModelNotFound):
        local.anomaly_score("never-fitted", data)


def test_bad_input_over_http(server):
    def error(path, body, status=400):
        response = server.post(path, body)
        assert response.status_code == status, response.text
        return response.json()["error"]

    assert "NaN" in error("universal/v1/anomaly/fit", {"model": "bad", "data": [[1.0, None], [2.0, 3.0]]})["message"]
    assert error("universal/v1/anomaly/fit", {"model": "bad", "data": [[1.0], [2.0]],
                                              "contamination": 0.9})["param"] == "contamination"
    assert error("universal/v1/anomaly/fit", {"model": "bad", "data": [[1.0]]})["param"] == "data"
    assert error("universal/v1/anomaly/score", {"model": "never-fitted", "data": [[1.0]]}, 404)["code"] \
        == "model_not_found"
    assert error("universal/v1/anomaly/fit", {"data": [[1.0]]})["param"] == "model"


# The magic ---------------------------------------------------------------------------------------------
def test_magic_fits_and_scores_in_one_go_without_keeping_it(ip, runtime, data):
    before = {d.name for d in runtime.anomaly_models()}
    frame = data.set_index(data.index * 10)
    ip.user_ns["df"] = frame
    captured, result = run(ip, "%anomaly df --contamination 0.05 --column outlier")
    assert result.success, result.error_in_exec
    assert result.result is None and {"outlier", "outlier_is_anomaly"} <= set(frame.columns)
    top15 = set(frame["outlier"].nlargest(15).index)
    assert len(top15 & set(range(5000, 5100, 10))) >= 8
    assert abs(frame["outlier_is_anomaly"].mean() - 0.05) <= 0.02
    assert "anomalies" in captured.stdout
    assert {d.name for d in runtime.anomaly_models()} == before  # the temporary detector was deleted


def test_magic_text_series_with_missing_rows_and_fit_keeps(ip, runtime, kept):
    name = kept("magic")
    texts = pd.Series(football() + [None] + ODD + [float("nan")], index=[f"r{i}" for i in range(45)])
    ip.user_ns["texts"] = texts
    captured, result = run(ip, f"%anomaly texts --fit {name} --out scores")
    assert result.success, result.error_in_exec
    scores = ip.user_ns["scores"]
    assert list(scores.index) == list(texts.index) and scores.name == "anomaly_score"
    assert scores.isna().tolist() == [False] * 40 + [True] + [False] * 3 + [True]
    assert set(scores.nlargest(3).index) == {"r41", "r42", "r43"}
    assert "2 of 45 values are missing" in captured.stderr
    assert name in {d.name for d in runtime.anomaly_models()}  # kept under --fit NAME


@pytest.mark.parametrize("line, match", [
    ("bad_df", "missing values in column 'city'"),
    ("holes", "missing"),
    ("df --model never-fitted-here", "no anomaly detector"),
    ("df --fit ../x", "not a detector name"),
    ("df --contamination 0.7", "contamination"),
    ("df --backend svm", "unknown anomaly backend"),
    ("df --fit a --model b", "give one of them"),
])
def test_magic_errors_are_one_line(ip, data, line, match):
    ip.user_ns.update(df=data, bad_df=data.assign(city=None), holes=data.mask(data > 2.5))
    with pytest.raises(UsageError, match=match) as info:
        ip.run_line_magic("anomaly", line)
    assert "\n" not in str(info.value)
