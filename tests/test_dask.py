"""The row magics on Dask collections, on a real `distributed.LocalCluster` with two worker processes.

Each worker process gets one runtime from the WorkerPlugin and loads the models itself (the same
PyPI packages as this process), so the results must equal the local runtime's row for row.
"""

from __future__ import annotations

import os
import signal
import time

import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from universal_kernel import ModelNotFound, dask_cluster
from universal_kernel.machine import cpu_has_bf16
from universal_kernel.row_executor import run_partition
from universal_kernel.tasks.embed_rows import ROWS as EMBED_ROWS

from .conftest import MINILM
from .magics_support import ip, run  # noqa: F401,F811

WORDS = ["cats purr on the sofa", "the striker scored in the final", "Angela Merkel visited Paris in May",
         "interest rates rose again", "a recipe for lemon cake", "Berlin and Madrid signed a treaty"]
TEXTS = [f"{WORDS[i % len(WORDS)]} ({i})" for i in range(48)]
TEXTS[5] = None
TEXTS[17] = ""
LABELS = "sports,politics,food"


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as local_cluster:
        with distributed.Client(local_cluster) as client:
            yield local_cluster, client


@pytest.fixture(scope="module", autouse=True)
def unload_task_models_afterwards(runtime):
    """The session runtime is shared: later tests count its loaded models (the two defaults); the local
    sides of these tests load spaCy and rapidocr into it."""
    yield
    runtime.unload("en-core-web-sm")
    runtime.unload("rapidocr")


@pytest.fixture
def client(cluster):
    return cluster[1]


@pytest.fixture
def frames(ip):
    frame = pd.DataFrame({"text": TEXTS, "x": np.arange(48.0), "y": np.sin(np.arange(48.0))},
                         index=pd.RangeIndex(100, 148))
    lazy = dd.from_pandas(frame, npartitions=4)
    ip.user_ns.update(df=frame, ddf=lazy)
    return frame, lazy


def ran(shell, code: str):
    captured, result = run(shell, code)
    assert result.success, result.error_in_exec
    return captured, result.result


def requests_on_workers(client) -> int:
    return sum(len(status["recent"]) for status in dask_cluster.worker_status(client).values())


def test_embed_is_lazy_and_equals_local(ip, client, frames):
    before = requests_on_workers(client)
    captured, _ = ran(ip, "lazy = %embed ddf.text")
    assert "lazy on the Dask cluster" in captured.stdout and "4 partitions" in captured.stdout
    lazy = ip.user_ns["lazy"]
    assert isinstance(lazy, dd.Series)
    # building the graph asked the workers whether they have the model, and computed no row
    assert requests_on_workers(client) == before

    rows = lazy.compute()
    assert requests_on_workers(client) > before
    assert list(rows.index) == list(range(100, 148))
    remote = np.stack(rows.tolist())
    _, local = ran(ip, "%embed df.text")
    assert remote.shape == local.shape
    missing = np.isnan(local[:, 0])
    assert missing.tolist() == np.isnan(remote[:, 0]).tolist() and missing.sum() == 1
    cosines = (remote[~missing] * local[~missing]).sum(axis=1)
    assert cosines.min() >= 0.9999


def test_model_loads_once_per_worker_with_the_workers_threads(ip, client, frames):
    ran(ip, "%embed ddf.text --out first")
    ip.user_ns["first"].compute()
    loads = {address: status["loads"] for address, status in dask_cluster.worker_status(client).items()}
    ran(ip, "%embed ddf.text --out second")
    ip.user_ns["second"].compute()
    statuses = dask_cluster.worker_status(client)
    assert {address: status["loads"] for address, status in statuses.items()} == loads
    for status in statuses.values():
        assert status["threads"] == 1  # threads_per_worker=1: no oversubscription of the two cores
        assert [m["id"] for m in status["models"]].count("all-minilm-l6-v2") <= 1
    assert any("all-minilm-l6-v2" in [m["id"] for m in s["models"]] for s in statuses.values())
    torch_threads = client.run(lambda: __import__("torch").get_num_threads())
    assert set(torch_threads.values()) == {1}


def test_column_is_added_lazily(ip, client, frames):
    _, lazy = frames
    columns = list(lazy.columns)
    ran(ip, "%embed ddf.text --column vector")
    ran(ip, f"%classify ddf.text --labels {LABELS} --column topic")
    assert list(lazy.columns) == columns + ["vector", "topic", "topic_score"]
    computed = lazy.compute()
    assert computed.topic.isna().tolist() == [t is None or t == "" for t in TEXTS]
    assert np.isnan(computed.vector.loc[105]).all()


def test_classify_and_ner_equal_local(ip, client, frames, runtime):
    _, lazy_labels = ran(ip, f"%classify ddf.text --labels {LABELS}")
    _, local_labels = ran(ip, f"%classify df.text --labels {LABELS}")
    remote = lazy_labels.compute()
    assert list(remote.index) == list(local_labels.index)
    # Zero-shot scores are a softmax of cosines at temperature 0.05. In fp32 a row's vector hardly depends on
    # the batch it came in; in bf16 (the workers' auto on a CPU with AVX512_BF16/AMX) it does, within the
    # probe's promise, and the softmax magnifies that: the tolerance the project gives classifier outputs
    # under bf16 applies.
    bf16 = cpu_has_bf16() or any(m["id"] == MINILM and m.get("precision") == "bf16"
                                 for m in runtime.status()["models"])
    tolerance = 0.01 if bf16 else 1e-4
    local, far = local_labels.score.to_numpy(dtype=float), remote.score.to_numpy(dtype=float)
    assert np.allclose(far, local, atol=tolerance, equal_nan=True), np.nanmax(np.abs(far - local))
    # labels agree wherever the local winner led by more than the tolerance allows to move
    decided = np.isnan(local) | (local > 0.5 + 2 * tolerance)
    assert remote.label.fillna("-")[decided].tolist() == local_labels.label.fillna("-")[decided].tolist()
    assert decided.sum() >= len(local) // 2, local  # the check above is not empty

    _, lazy_entities = ran(ip, "%ner ddf.text")
    _, local_entities = ran(ip, "%ner df.text")
    remote = lazy_entities.compute().reset_index(drop=True)
    assert len(local_entities) > 10
    columns = ["row", "text", "label", "start", "end"]
    assert remote[columns].astype(object).values.tolist() == local_entities[columns].astype(object).values.tolist()


def test_ocr_of_image_paths(ip, client, runtime):
    """A Dask Series of paths (inside the model folders, which the workers' runtimes share here)."""
    from PIL import Image, ImageDraw, ImageFont

    def png(line: str) -> str:
        image = Image.new("RGB", (420, 80), "white")
        ImageDraw.Draw(image).text((16, 16), line, fill="black", font=ImageFont.load_default(size=36))
        path = runtime.config.model_folders[0] / f"dask-{line.split()[-1]}.png"
        image.save(path, "PNG")
        return str(path)

    images = pd.Series([png("Invoice 4217"), None, png("Total due 93 EUR")], index=["a", "b", "c"])
    ip.user_ns["images"] = dd.from_pandas(images, npartitions=2)
    ip.user_ns["local_images"] = images
    _, lazy = ran(ip, "%ocr images")
    _, local = ran(ip, "%ocr local_images")
    remote = lazy.compute()
    assert remote.tolist() == local.tolist() and remote.loc["b"] == ""
    assert "4217" in remote.loc["a"]
    # --boxes --column: each row's lines as a list of dicts, as the local magic stores them
    scans = pd.DataFrame({"path": images})
    ip.user_ns.update(scans=scans, lazy_scans=dd.from_pandas(scans, npartitions=2))
    ran(ip, "%ocr lazy_scans.path --boxes --column lines")
    ran(ip, "%ocr scans.path --boxes --column lines")
    far = ip.user_ns["lazy_scans"].compute().lines
    assert [[b["text"] for b in row] for row in far] == [[b["text"] for b in row] for row in scans.lines]
    assert far.loc["b"] == [] and any("4217" in b["text"] for b in far.loc["a"])


def test_anomaly_scores_with_a_detector_shipped_to_the_workers(ip, client, frames):
    ip.user_ns["numbers"] = frames[0][["x", "y"]]
    ip.user_ns["lazy_numbers"] = frames[1][["x", "y"]]
    ran(ip, "%anomaly numbers --fit dask-numbers")
    _, lazy = ran(ip, "%anomaly lazy_numbers --model dask-numbers")
    _, local = ran(ip, "%anomaly numbers --model dask-numbers")
    assert isinstance(lazy, dd.Series)
    remote = lazy.compute()
    assert list(remote.index) == list(local.index)
    assert np.allclose(remote.to_numpy(), local.to_numpy())
    message = str(pytest.raises(UsageError, ip.run_line_magic, "anomaly", "lazy_numbers --fit again").value)
    assert "fit one on a sample" in message


def test_a_missing_model_is_a_clear_error_not_a_hang(ip, client, frames):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("embed", "ddf.text -m no-such-model")
    message = str(info.value)
    assert "\n" not in message and "2 of 2 Dask workers" in message and "no-such-model" in message
    # a graph built without the check (another client's, say) fails at compute, with the runtime's error
    lazy = frames[1].text.map_partitions(run_partition, EMBED_ROWS, {"model": "no-such-model"},
                                         meta=pd.Series([], dtype=object))
    with pytest.raises(ModelNotFound):  # raised, not hung (the suite's timeout ends a hang)
        lazy.compute()


def test_a_worker_killed_mid_partition_is_retried_and_the_result_complete(ip, client, frames):
    texts = pd.Series([f"row {i}: {WORDS[i % len(WORDS)]} with more words to embed" for i in range(1200)])
    ip.user_ns["many"] = dd.from_pandas(texts, npartitions=12)
    _, lazy = ran(ip, "%embed many")
    future = client.compute(lazy)
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        busy = [address for address, keys in client.processing().items() if keys]
        victim = busy[0] if busy and any(client.processing().values()) else None
        time.sleep(0.05)
    assert victim is not None
    time.sleep(0.3)  # inside a partition
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    rows = future.result(timeout=300)
    assert victim not in client.scheduler_info()["workers"]  # it died (the nanny started a new one)
    assert len(rows) == 1200 and not any(np.isnan(v).any() for v in rows)
    local = ip.run_line_magic("embed", "list(many.compute())")
    assert ((np.stack(rows.tolist()) * local).sum(axis=1)).min() >= 0.9999


def test_runtime_use_dask(ip, cluster):
    local_cluster, _ = cluster
    captured, _ = ran(ip, f"%runtime use dask {local_cluster.scheduler_address}")
    assert local_cluster.scheduler_address in captured.stdout and "2 workers" in captured.stdout
    magics = ip.magics_manager.registry["UniversalKernelMagics"]
    try:
        assert magics.dask_client.scheduler.address == local_cluster.scheduler_address
        message = str(pytest.raises(UsageError, ip.run_line_magic, "runtime", "use dask tcp://127.0.0.1:9").value)
        assert "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in message
        # the failed `use` changed nothing
        assert magics.dask_client.scheduler.address == local_cluster.scheduler_address
    finally:
        magics.dask_client.close()
        magics.dask_client = None
