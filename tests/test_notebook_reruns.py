"""The notebook as people use it (issue 32): a cell run twice gives what it gave once, preloaded models
stay loaded (pinned), and repeated rows do not turn half of the data into anomalies.

Real shells on the session runtime, a real `jupyter server` of this module with a 1 s keep_alive (so the
reaper runs within the test, not after 5 minutes), a real in-process Dask cluster.
"""

from __future__ import annotations

import io
import math
import uuid

import numpy as np
import pandas as pd
import pytest

from .conftest import MINILM, SMOLLM, TOKEN, Server, start_server, stop_process, wait_for
from .magics_support import ip, run  # noqa: F401

SPACY = "en-core-web-sm"
OCR = "rapidocr"
TEXTS = ["The striker scored twice in the final minutes of the match.",
         "Angela Merkel met Emmanuel Macron in Berlin on Tuesday.",
         None,
         "A recipe for lemon cake with fresh blueberries."]
INDEX = [10, 20, 30, 40]


@pytest.fixture(scope="module", autouse=True)
def unload_task_models_afterwards(runtime):
    """The session runtime is shared: later tests count its loaded models (the two defaults)."""
    yield
    runtime.unload(SPACY)
    runtime.unload(OCR)


def ran(shell, code: str):
    captured, result = run(shell, code)
    assert result.success, result.error_in_exec
    return captured, result.result


def ran_twice(shell, code: str, frame: pd.DataFrame):
    """Run `code` twice; the frame after the first run (a copy), and the outputs of both runs."""
    first, _ = ran(shell, code)
    once = frame.copy(deep=True)
    second, _ = ran(shell, code)
    return once, first, second


# 2. A cell run again ------------------------------------------------------------------------------
@pytest.fixture
def numbers(ip):
    rng = np.random.default_rng(7)
    train = pd.DataFrame(rng.normal(size=(200, 3)), columns=["amount", "hour", "items"])
    new_df = pd.DataFrame(rng.normal(size=(30, 3)), columns=["amount", "hour", "items"])
    new_df.iloc[3] = [9.0, -9.0, 9.0]
    ip.user_ns.update(train=train, new_df=new_df)
    return train, new_df


@pytest.fixture
def detector(ip, runtime, numbers):
    name = f"rerun-{uuid.uuid4().hex[:8]}"
    yield name
    runtime.anomaly_delete(name)


def test_anomaly_column_with_a_kept_detector_runs_twice(ip, numbers, detector):
    _, new_df = numbers
    ran(ip, f"%anomaly train --fit {detector}")
    once, first, second = ran_twice(ip, f"%anomaly new_df --model {detector} --column score", new_df)
    pd.testing.assert_frame_equal(new_df, once)
    assert list(new_df.columns) == ["amount", "hour", "items", "score", "score_is_anomaly"]
    assert bool(new_df.loc[3, "score_is_anomaly"])
    assert first.stdout.split(" \u00b7 ")[:3] == second.stdout.split(" \u00b7 ")[:3]
    # the frame remembers which columns the magic wrote: scoring it again without --column reads the data only
    _, scores = ran(ip, f"%anomaly new_df --model {detector}")
    np.testing.assert_allclose(scores.to_numpy(), new_df["score"].to_numpy())


def test_anomaly_fit_and_score_in_one_go_runs_twice(ip, numbers):
    train, _ = numbers
    once, _, _ = ran_twice(ip, "%anomaly train --contamination 0.05 --column outlier", train)
    # the second run fitted on the same three columns as the first, not on its own output
    pd.testing.assert_frame_equal(train, once)


def test_anomaly_fit_of_the_same_name_is_replaced_and_says_so(ip, runtime, numbers, detector):
    first, _ = ran(ip, f"%anomaly train --fit {detector} --column s")
    second, _ = ran(ip, f"%anomaly train --fit {detector} --column s")
    assert "replacing" not in first.stdout
    assert f"kept as {detector!r} (replacing the detector fitted before under that name)" in second.stdout
    assert len(second.stdout.strip().splitlines()) == 1
    (kept,) = [d for d in runtime.anomaly_models() if d.name == detector]
    assert kept.columns == ["amount", "hour", "items"]


def test_anomaly_on_dask_column_runs_twice(ip, numbers, detector):
    import dask.dataframe as dd

    ran(ip, f"%anomaly train --fit {detector}")
    _, new_df = numbers
    ip.user_ns["ddf"] = dd.from_pandas(new_df, npartitions=3)
    ran(ip, f"%anomaly ddf --model {detector} --column score")
    once = ip.user_ns["ddf"].compute(scheduler="sync")
    ran(ip, f"%anomaly ddf --model {detector} --column score")
    twice = ip.user_ns["ddf"].compute(scheduler="sync")
    pd.testing.assert_frame_equal(twice, once)
    assert list(twice.columns) == ["amount", "hour", "items", "score", "score_is_anomaly"]


@pytest.fixture
def df(ip):
    frame = pd.DataFrame({"text": TEXTS}, index=INDEX)
    ip.user_ns["df"] = frame
    return frame


def test_embed_column_runs_twice(ip, df):
    once, _, _ = ran_twice(ip, "%embed df.text --column vec", df)
    assert list(df.columns) == list(once.columns) == ["text", "vec"]
    for a, b in zip(once["vec"], df["vec"]):
        np.testing.assert_array_equal(a, b)


def test_classify_column_runs_twice(ip, df):
    once, _, _ = ran_twice(ip, "%classify df.text --labels sports,politics,food --column topic", df)
    pd.testing.assert_frame_equal(df, once)
    assert list(df.columns) == ["text", "topic", "topic_score"]


def test_ner_column_runs_twice(ip, df):
    once, _, _ = ran_twice(ip, f"%ner df.text -m {SPACY} --column entities", df)
    pd.testing.assert_frame_equal(df, once)
    assert list(df.columns) == ["text", "entities"]


def test_ocr_column_runs_twice(ip):
    from PIL import Image, ImageDraw, ImageFont

    def png(text: str) -> bytes:
        image = Image.new("RGB", (420, 80), "white")
        ImageDraw.Draw(image).text((16, 14), text, fill="black", font=ImageFont.load_default(size=36))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    scans = pd.DataFrame({"image": [png("Invoice 4217"), None]}, index=["a", "b"])
    ip.user_ns["scans"] = scans
    once, _, _ = ran_twice(ip, "%ocr scans.image --column read", scans)
    pd.testing.assert_frame_equal(scans, once)
    assert "4217" in scans.loc["a", "read"]


def test_alias_runs_twice(ip, runtime):
    name = f"rerun-alias-{uuid.uuid4().hex[:6]}"
    try:
        first, _ = ran(ip, f"%runtime alias {name} {SMOLLM}")
        second, _ = ran(ip, f"%runtime alias {name} {SMOLLM}")
        assert first.stdout == second.stdout and first.stdout.startswith(f"{name} -> ")
        moved, _ = ran(ip, f"%runtime alias {name} {MINILM}")
        assert moved.stdout.rstrip().endswith(f"; it was {SMOLLM}")
        assert runtime.resolve(name).path == runtime.resolve(MINILM).path
    finally:
        runtime.resolver.aliases.pop(name, None)


def test_use_dask_runs_twice(ip):
    import distributed

    magics = ip.magics_manager.registry["UniversalKernelMagics"]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None, silence_logs=40) as cluster:
        try:
            first, _ = ran(ip, f"%runtime use dask {cluster.scheduler_address}")
            client = magics.dask_client
            second, _ = ran(ip, f"%runtime use dask {cluster.scheduler_address}")
            assert magics.dask_client is client and client.status == "running"  # no second connection
            assert first.stdout == second.stdout
        finally:
            if magics.dask_client is not None:
                magics.dask_client.close()
            magics.dask_client = None


def test_use_local_runs_twice(ip, runtime):
    magics = ip.magics_manager.registry["UniversalKernelMagics"]
    first, _ = ran(ip, "%runtime use local")
    second, _ = ran(ip, "%runtime use local")
    assert first.stdout == second.stdout and not magics.use_server
    assert magics.runtime_for() is runtime


# 5. Preloaded models are pinned ---------------------------------------------------------------------
#: preloaded, so pinned; and a model loaded later, which the 1 s default keep_alive unloads
PRELOADED, TRANSIENT = MINILM, SPACY


@pytest.fixture(scope="module")
def short_keep_alive_server(minilm_path, tmp_path_factory):
    """`jupyter server` with a keep_alive of 1 s and all-MiniLM-L6-v2 preloaded."""
    srv = start_server(tmp_path_factory.mktemp("reruns-server"), f'--UniversalKernelApp.preload=["{PRELOADED}"]',
                       "--UniversalKernelApp.keep_alive=1",
                       ready=lambda status: PRELOADED in {m["id"] for m in status["models"]})
    yield srv
    stop_process(srv.process)


def _loaded(server: Server) -> dict[str, dict]:
    return {m["id"]: m for m in server.status()["models"]}


def _load_and_wait_until_reaped(server: Server, model: str) -> None:
    """Load `model` with the server's default keep_alive (1 s) and wait until the reaper unloads it: the
    reaper has then swept past the default expiry of everything that was idle before it."""
    response = server.post("universal/api/load", {"model": model})
    assert response.status_code == 200, response.text
    wait_for(lambda: model not in _loaded(server), 120,
             lambda: f"{model} (keep_alive 1 s) was never unloaded: {_loaded(server)}")


def _embed(server: Server, **extra) -> None:
    server.client().embeddings.create(model=PRELOADED, input=["a pinned model"], extra_body=extra)


def test_preloaded_model_is_pinned_while_others_expire(short_keep_alive_server):
    server = short_keep_alive_server
    for _ in range(2):  # twice: each time the reaper swept past the preloaded model's default expiry
        _load_and_wait_until_reaped(server, TRANSIENT)
        for _ in range(3):
            assert PRELOADED in _loaded(server), "the default keep_alive unloaded a preloaded model"
    pinned = _loaded(server)[PRELOADED]
    assert pinned["pinned"] is True and pinned["keep_alive"] < 0 and pinned["expires_in_s"] is None
    _embed(server)  # a request that gives no keep_alive leaves the pin as it is
    _load_and_wait_until_reaped(server, TRANSIENT)
    assert _loaded(server)[PRELOADED]["pinned"] is True


def test_status_in_the_notebook_says_pinned(ip, short_keep_alive_server):
    server = short_keep_alive_server
    magics = ip.magics_manager.registry["UniversalKernelMagics"]
    try:
        first, _ = ran(ip, f"%runtime use server {server.url} --token {TOKEN}")
        remote = magics.runtime_for()
        second, _ = ran(ip, f"%runtime use server {server.url} --token {TOKEN}")
        assert first.stdout == second.stdout and magics.use_server
        assert magics.runtime_for() is remote  # run again: the same runtime, with what it measured
        _, status = ran(ip, "%runtime status")
        row = next(line for line in repr(status).splitlines() if line.startswith(PRELOADED))
        assert "pinned" in row.split()
        assert "<td style='text-align:left;padding:0 8px'>pinned</td>" in status._repr_html_()
    finally:
        ran(ip, "%runtime use local")


def test_keep_alive_given_for_a_pinned_model_applies(short_keep_alive_server):
    server = short_keep_alive_server
    assert _loaded(server)[PRELOADED]["pinned"] is True
    _embed(server, keep_alive=1)
    wait_for(lambda: PRELOADED not in _loaded(server), 120,
             lambda: f"{PRELOADED} stayed loaded after a request with keep_alive 1: {_loaded(server)}")


# 6. The anomaly threshold with repeated rows ------------------------------------------------------
ODD = "The quarterly derivative exposure breached the Basel III liquidity coverage ratio."


def test_repeated_comments_flag_the_odd_one_only(ip):
    comments = pd.DataFrame({"comment": ["Great product, works exactly as described."] * 20
                             + ["Delivery was late and the box arrived damaged."] * 20 + [ODD]})
    ip.user_ns["comments"] = comments
    captured, _ = ran(ip, "%anomaly comments.comment --column odd")
    assert comments.index[comments["odd_is_anomaly"]].tolist() == [40]
    assert comments["odd"].idxmax() == 40
    assert " 1 anomal" in captured.stdout


@pytest.mark.parametrize("backend", ["isolation_forest", "local_outlier_factor"])
@pytest.mark.parametrize("contamination", [0.05, 0.1, 0.3])
def test_tied_training_rows_never_exceed_the_contamination_share(runtime, backend, contamination):
    rows = np.array([[0.0, 0.0]] * 20 + [[1.0, 1.0]] * 20 + [[3.0, 1.0]] * 6 + [[9.0, -9.0]])
    name = f"ties-{uuid.uuid4().hex[:8]}"
    try:
        detector = runtime.anomaly_fit(name, rows, backend=backend, contamination=contamination)
        result = runtime.anomaly_score(name, rows)
        # the rows in another order: scored by the detector again, not taken from the fit's own scores
        again = runtime.anomaly_score(name, rows[::-1])
    finally:
        runtime.anomaly_delete(name)
    flagged = np.flatnonzero(result.is_anomaly)
    assert len(flagged) <= math.ceil(contamination * len(rows))
    assert 46 in flagged  # the one far row
    # a block of repeated rows is flagged whole or not at all
    for block in (range(0, 20), range(20, 40), range(40, 46)):
        assert len(set(result.is_anomaly[list(block)])) == 1
    assert (result.is_anomaly == (result.scores >= detector.threshold)).all()
    assert (again.is_anomaly[::-1] == result.is_anomaly).all()
