"""Models by their Hub id through the doors: `%runtime pull` and pull on first use in a real kernel,
`POST universal/api/pull` (NDJSON as Ollama's /api/pull) and `DELETE universal/api/models/REF` on a real
`jupyter server`, against the local Hub-compatible server (tests/hub_server.py)."""

from __future__ import annotations

import json
import os

import pytest
from jupyter_client.manager import start_new_kernel

from tests.conftest import SMOLLM, TOKEN, start_server, stop_process
from tests.hub_server import local_hub
from tests.test_magics_kernel import execute

GGUF_REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
hub = pytest.fixture(scope="module")(local_hub)


def _stream_text(messages) -> str:
    return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")


def test_a_fresh_kernel_pulls_with_a_widget_then_generates_by_hub_id(hub, tmp_path, runtime):
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"))
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        reply, messages = execute(kc, f"%load_ext universal_kernel\n%runtime pull {GGUF_REPO}:Q8_0", timeout=300)
        assert reply["status"] == "ok", reply
        views = [m for m in messages if m["msg_type"] == "display_data"
                 and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
        assert views, "no progress widget was displayed"
        final = _stream_text(messages).strip().splitlines()[-1]
        assert final.startswith(f"{GGUF_REPO}:Q8_0 -> {tmp_path / 'hub'}") and final.endswith("MiB)")
        assert final.split(" -> ")[1].split(" (")[0].endswith("SmolLM2-135M-Instruct-Q8_0.gguf")
        assert {e["file"] for e in hub.state.log if e["method"] == "GET"} == {"SmolLM2-135M-Instruct-Q8_0.gguf"}
        # a first %%generate by another quant of the repo pulls on first use (allow_downloads on in kernels)
        hub.state.log.clear()
        reply, messages = execute(kc, f"%%generate -m {GGUF_REPO}:q4_k_m --max-tokens 8 --temperature 0 "
                                      f"--format text\nThe capital of France is", timeout=300)
        assert reply["status"] == "ok", reply
        assert any(m["msg_type"] == "display_data" and "application/vnd.jupyter.widget-view+json"
                   in m["content"]["data"] for m in messages)
        last = "from universal_kernel.magics import get_magics\nprint(repr(get_magics(get_ipython()).last_generation.text))"
        text = eval(_stream_text(execute(kc, last)[1]))
        # the same cell on the built-in alias of the same weights says the same
        reply, _ = execute(kc, f"%%generate -m {SMOLLM} --max-tokens 8 --temperature 0 --format text\n"
                               f"The capital of France is", timeout=300)
        assert reply["status"] == "ok", reply
        assert text and text == eval(_stream_text(execute(kc, last)[1]))
        reply, messages = execute(kc, f"%runtime rm {GGUF_REPO}")
        assert reply["status"] == "ok" and "removed test-org/SmolLM2-135M-Instruct-GGUF (1 revision)" in \
            _stream_text(messages)
        reply, messages = execute(kc, f"%runtime pull {GGUF_REPO}:Q2_K")
        assert reply["status"] == "error" and reply["ename"] == "UsageError"
        assert "quants: Q4_K_M, Q4_K_S, Q8_0" in reply["evalue"] and "\n" not in reply["evalue"]
        # each failure of a pull says what failed, in one line
        for ref, says in [("test-org/gated-GGUF", "is gated or private: a token with access is needed (set HF_TOKEN"),
                          ("test-org/nothing-here", "no repo test-org/nothing-here on http://127.0.0.1")]:
            reply, _ = execute(kc, f"%runtime pull {ref}")
            assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
            assert says in reply["evalue"] and "\n" not in reply["evalue"], reply["evalue"]
        hub.state.unavailable = 503
        try:
            reply, _ = execute(kc, f"%runtime pull {GGUF_REPO}:Q8_0")
        finally:
            hub.state.unavailable = None
        assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
        assert "answered HTTP 503 (check HF_ENDPOINT" in reply["evalue"] and "\n" not in reply["evalue"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def pulling_server(hub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pull-server")
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_CACHE": str(folder / "hub")}
    srv = start_server(folder, "--UniversalKernelApp.allow_downloads=True", env=env)
    yield srv
    stop_process(srv.process)


def test_post_pull_streams_ndjson_progress_to_success(hub, pulling_server, smollm_path):
    response = pulling_server.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q8_0", "stream": True},
                                   stream=True, timeout=300)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.iter_lines() if line]
    downloading = [line for line in lines if line["status"] == "downloading SmolLM2-135M-Instruct-Q8_0.gguf"]
    size = smollm_path.stat().st_size
    assert downloading and all(line["total"] == size for line in downloading)
    assert downloading[0]["digest"].startswith("sha256:") and len(downloading[0]["digest"]) == 71
    assert [line["completed"] for line in downloading] == sorted(line["completed"] for line in downloading)
    assert lines[-1]["status"] == "success" and lines[-1]["size"] == size and lines[-1]["quant"] == "Q8_0"
    # the pulled model is listed and served by its Hub id
    assert f"{GGUF_REPO}:Q8_0" in [m["id"] for m in pulling_server.get("universal/v1/models").json()["data"]]
    completion = pulling_server.client().chat.completions.create(
        model=f"{GGUF_REPO}:Q8_0", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert completion.model == f"{GGUF_REPO}:Q8_0" and completion.usage.completion_tokens > 0
    # errors: an OpenAI body before any line; removal through the cache API
    refused = pulling_server.post("universal/api/pull", {"model": "test-org/gated-GGUF", "stream": False})
    assert refused.status_code == 403 and "gated or private" in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "gated_model" and "HF_TOKEN" in refused.json()["error"]["message"]
    streamed = pulling_server.post("universal/api/pull", {"model": "test-org/gated-GGUF"})
    last = json.loads(streamed.text.strip().splitlines()[-1])
    assert streamed.status_code == 200 and "gated or private" in last["error"]["message"]
    assert last["error"]["code"] == "gated_model"
    # each failure with its own status and code, before any line and as the stream's last line
    hub.state.unavailable = 503
    try:
        down = pulling_server.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q4_K_S", "stream": False})
        down_line = json.loads(pulling_server.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q4_K_S"})
                               .text.strip().splitlines()[-1])
    finally:
        hub.state.unavailable = None
    assert down.status_code == 503 and down.json()["error"]["code"] == "hub_unavailable"
    assert "answered HTTP 503" in down.json()["error"]["message"] and down_line["error"]["code"] == "hub_unavailable"
    for ref, status, code in [("test-org/nothing-here", 404, "model_not_found"),
                              (f"{GGUF_REPO}@v9", 404, "model_not_found")]:
        answer = pulling_server.post("universal/api/pull", {"model": ref, "stream": False})
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
        line = json.loads(pulling_server.post("universal/api/pull", {"model": ref}).text.strip().splitlines()[-1])
        assert line["error"]["code"] == code and "\n" not in line["error"]["message"]
    bad = pulling_server.post("universal/api/pull", {"model": 42})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "model"
    import requests

    deleted = requests.delete(pulling_server.url + f"universal/api/models/{GGUF_REPO}",
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert deleted.status_code == 200 and len(deleted.json()["revisions"]) == 1


def test_the_default_server_refuses_to_pull(hub, server):
    response = server.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q8_0"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "downloads_disabled"
    response = server.post("universal/v1/embeddings", {"model": "test-org/not-cached", "input": "x"})
    assert response.status_code == 404
    assert "not in the Hugging Face cache" in response.json()["error"]["message"]
    assert not [e for e in hub.state.log if "not-cached" in e["file"]]


def test_the_remote_runtime_pulls_on_the_server(hub, pulling_server):
    from universal_kernel.client import RemoteRuntime
    from universal_kernel.errors import GatedModel, HubUnavailable, ModelNotFound

    remote = RemoteRuntime.connect(pulling_server.url, TOKEN)
    reports = []
    result = remote.pull(f"{GGUF_REPO}:q4_k_s", progress=reports.append)
    assert result.path.name == "SmolLM2-135M-Instruct-q4_k_s.gguf" and result.quant == "Q4_K_S"
    assert str(result.path).startswith(str(pulling_server.log.parent / "hub"))  # the server's cache, not ours
    assert any(r.status == "downloading SmolLM2-135M-Instruct-q4_k_s.gguf" and r.digest for r in reports)
    with pytest.raises(GatedModel, match="gated or private"):
        remote.pull("test-org/gated-GGUF")
    with pytest.raises(ModelNotFound, match="no repo test-org/nothing-here"):
        remote.pull("test-org/nothing-here")
    hub.state.unavailable = 503
    try:
        with pytest.raises(HubUnavailable, match="answered HTTP 503"):
            remote.pull(f"{GGUF_REPO}:Q4_K_M")
    finally:
        hub.state.unavailable = None
    assert remote.remove_pulled(GGUF_REPO) == [result.revision]


def test_a_pull_over_the_servers_memory_budget_is_a_413_before_any_byte(hub, tmp_path):
    """The server's memory budget refuses weights that could never load there: its own status and code, with the
    bytes, through the route (both shapes) and the remote runtime."""
    from universal_kernel.client import RemoteRuntime
    from universal_kernel.errors import ModelTooLarge

    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_CACHE": str(tmp_path / "hub")}
    srv = start_server(tmp_path, "--UniversalKernelApp.allow_downloads=True",
                       "--UniversalKernelApp.memory_budget=50000000", env=env)
    try:
        hub.state.log.clear()
        answer = srv.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q8_0", "stream": False})
        assert answer.status_code == 413, answer.text
        error = answer.json()["error"]
        assert error["code"] == "model_too_large" and error["param"] == "model"
        assert "more than the memory budget" in error["message"] and "50,000,000 allowed" in error["message"]
        line = json.loads(srv.post("universal/api/pull", {"model": f"{GGUF_REPO}:Q8_0"}).text.strip().splitlines()[-1])
        assert line["error"]["code"] == "model_too_large"
        with pytest.raises(ModelTooLarge, match="50,000,000 allowed"):
            RemoteRuntime.connect(srv.url, TOKEN).pull(f"{GGUF_REPO}:Q8_0")
        assert not hub.state.served("SmolLM2-135M-Instruct-Q8_0.gguf")
    finally:
        stop_process(srv.process)
