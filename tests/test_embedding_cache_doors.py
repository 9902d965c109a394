"""The embedding cache on disk through the doors users take: a `jupyter server` answering /v1/embeddings
and a real kernel running `%embed`, sharing one cache folder. Rows one door computed, the other serves from
the disk (the server's Prometheus counters and the kernel's own report say which), with the same vectors."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from jupyter_client.manager import start_new_kernel

from .conftest import MINILM, start_server, stop_process
from .test_magics_kernel import execute, value
from .test_metrics import scrape
from .test_metrics import value as sample

SERVER_FIRST = [f"the server embeds row {i} first" for i in range(6)]
KERNEL_FIRST = [f"the kernel embeds row {i} first" for i in range(5)]


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="module")
def server(minilm_path, cache_folder, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("cache-server"), "--UniversalKernelApp.keep_alive=-1",
                       env={"UNIVERSAL_KERNEL_EMBEDDING_CACHE": str(cache_folder)})
    yield srv
    stop_process(srv.process)


@pytest.fixture(scope="module")
def kernel(minilm_path, cache_folder, tmp_path_factory):
    import os

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path_factory.mktemp("cache-kernel")),
                              env=dict(os.environ, UNIVERSAL_KERNEL_EMBEDDING_CACHE=str(cache_folder)))
    try:
        reply, _ = execute(kc, "%load_ext universal_kernel")
        assert reply["status"] == "ok", reply
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def server_vectors(server, texts) -> np.ndarray:
    response = server.post("universal/v1/embeddings", {"model": MINILM, "input": texts, "encoding_format": "base64"})
    assert response.status_code == 200, response.text
    return np.stack([np.frombuffer(base64.b64decode(row["embedding"]), dtype=np.float32)
                     for row in response.json()["data"]])


def server_rows(server) -> tuple[float, float]:
    samples = scrape(server)
    return tuple(sample(samples, "universal_kernel_embedded_rows_total", model=MINILM, source=source)
                 for source in ("computed", "cache"))


def kernel_embed(kc, texts) -> tuple[np.ndarray, str]:
    reply, messages = execute(kc, f"_vectors = %embed {texts!r} --model {MINILM}")
    assert reply["status"] == "ok", reply
    report = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    return np.array(value(kc, "_vectors.tolist()"), dtype=np.float32), report


def test_rows_the_server_computed_come_from_the_disk_in_a_kernel(server, kernel):
    computed, cached = server_rows(server)
    from_server = server_vectors(server, SERVER_FIRST)
    assert server_rows(server) == (computed + len(SERVER_FIRST), cached)
    in_kernel, report = kernel_embed(kernel, SERVER_FIRST)
    assert f"0 computed, {len(SERVER_FIRST)} from cache" in report, report
    assert np.array_equal(in_kernel, from_server)


def test_rows_a_kernel_computed_come_from_the_disk_in_the_server(server, kernel):
    in_kernel, report = kernel_embed(kernel, KERNEL_FIRST)
    assert f"{len(KERNEL_FIRST)} computed, 0 from cache" in report, report
    computed, cached = server_rows(server)
    from_server = server_vectors(server, KERNEL_FIRST)
    assert server_rows(server) == (computed, cached + len(KERNEL_FIRST))
    assert np.array_equal(in_kernel, from_server)
