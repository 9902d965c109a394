"""`%runtime use server URL` and `--server` on OpenAI-compatible servers: llama-cpp-python's own server
(`llama_cpp.server`, started with the runtime's AMX guard, no runtime API of ours) and a second Jupyter server with this extension.

llama-cpp-python's server serves the SmolLM2 GGUF twice from one config file: as a chat model, and with
`embedding: true` as an embedding model (the minilm package ships no GGUF). A causal model has no pooling,
so that server would send one vector per token; `llama.pooling_type=int:1` (mean) in `kv_overrides` makes
it send one vector per input, as an embedding server does. The reference answers come from the official
`openai` client against the same server, on this machine, greedy and short.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests
from IPython.core.error import UsageError

from universal_kernel.backends.llama_amx import LLAMA_SERVER
from universal_kernel.client import NoRuntimeApi, RemoteRuntime, ServerUnavailable
from universal_kernel.magics import get_magics

from .conftest import FRANCE, MINILM, SMOLLM, TOKEN, stop_process, wait_for
from .magics_support import free_port, ip, run  # noqa: F401 (ip: the shell fixture)

KEY = "llama-server-test-key"
CHAT = "smollm2-chat"  # listed first: the default model of %%generate there
EMBED = "smollm2-embed"  # "embed" in the name: the default model of %embed there
NO_API = "OpenAI-compatible server without it"


class LlamaServer:
    def __init__(self, port: int, process, log):
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process = process
        self.log = log

    def client(self, key: str = KEY):
        import openai

        return openai.OpenAI(api_key=key, base_url=self.url, max_retries=0, timeout=120)

    def chat(self, messages, max_tokens: int, **kwargs) -> str:
        reply = self.client().chat.completions.create(model=CHAT, messages=messages, temperature=0,
                                                      max_tokens=max_tokens, **kwargs)
        return reply.choices[0].message.content

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture(scope="module")
def llama_server(smollm_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-server")
    port = free_port()
    model = {"model": str(smollm_path), "n_ctx": 512, "n_threads": 1, "n_threads_batch": 1, "verbose": False}
    config = {"host": "127.0.0.1", "port": port, "api_key": KEY, "models": [
        {**model, "model_alias": CHAT},
        {**model, "model_alias": EMBED, "embedding": True, "kv_overrides": ["llama.pooling_type=int:1"]}]}
    (folder / "config.json").write_text(json.dumps(config))
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-c", LLAMA_SERVER, "--config_file",
                                    str(folder / "config.json")], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    srv = LlamaServer(port, process, log)

    def up():
        assert process.poll() is None, f"llama_cpp.server exited:\n{srv.log_tail()}"
        try:
            return requests.get(srv.url + "/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).ok
        except requests.RequestException:
            return False

    try:
        wait_for(up, 120, lambda: f"llama_cpp.server did not start:\n{srv.log_tail()}")
        yield srv
    finally:
        stop_process(process)




@pytest.fixture
def on_llama(ip, llama_server):
    """The shell, its magics sent to llama-cpp-python's server; back on the in-process runtime after."""
    captured, result = run(ip, f"%runtime use server {llama_server.url} --token {KEY}")
    assert result.success, result.error_in_exec
    assert f"OpenAI-compatible server at {llama_server.url}/" in captured.stdout
    yield ip
    run(ip, "%runtime use local")


def one_line_error(ip, magic: str, line: str) -> str:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(magic, line)
    message = str(info.value)
    assert "\n" not in message
    return message


# llama-cpp-python's server ---------------------------------------------------------------------------
def test_generate_streams_what_the_server_itself_gives(on_llama, llama_server):
    ip, magics = on_llama, get_magics(on_llama)
    remote = magics.remote_runtime()
    assert not remote.has_runtime_api and remote.default_generation_model == CHAT
    captured, result = run(ip, f"%%generate --temperature 0 --max-tokens 12 --out text\n{FRANCE}")
    assert result.success, result.error_in_exec
    messages = [{"role": "user", "content": FRANCE}]
    expected = llama_server.chat(messages, 12)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in llama_server.client().chat.completions.create(
        model=CHAT, messages=messages, temperature=0, max_tokens=12, stream=True) if chunk.choices)
    assert ip.user_ns["text"] and ip.user_ns["text"] == expected == streamed
    assert CHAT in captured.outputs[-1].data["text/plain"] and "(server)" in captured.outputs[-1].data["text/plain"]
    assert remote.requests[-1].model == CHAT and remote.requests[-1].ttft_s is not None  # measured as it streamed

    # the same through `--server`, configured rather than chosen with `use`
    run(ip, "%runtime use local")
    magics._remote, magics.server_url, magics.server_token = None, llama_server.url, KEY
    try:
        _, result = run(ip, f"%%generate --server --temperature 0 --max-tokens 12 --out again\n{FRANCE}")
        assert result.success, result.error_in_exec
        assert ip.user_ns["again"] == expected and not magics.use_server
    finally:
        magics.server_url, magics.server_token = "", ""


def test_chat_across_two_cells_and_json(on_llama, llama_server):
    ip = on_llama
    ip.user_ns.pop("conv", None)  # the shell is shared: another test's conversation of that name goes
    first, second = FRANCE, "And which city is the capital of Italy?"
    for cell in (first, second):
        _, result = run(ip, f"%%generate --chat conv --temperature 0 --max-tokens 10\n{cell}")
        assert result.success, result.error_in_exec
    conv = ip.user_ns["conv"]
    assert conv.turns == 2 and [m["role"] for m in conv.messages] == ["user", "assistant"] * 2
    # each answer is what the server gives for the same history
    assert conv.messages[1]["content"] == llama_server.chat(conv.messages[:1], 10)
    assert conv.messages[3]["content"] == llama_server.chat(conv.messages[:3], 10)

    prompt = 'Reply with the JSON object {"city": "Paris"} only.'
    captured, result = run(ip, f"%%generate --format json --temperature 0 --max-tokens 16 --out answer\n{prompt}")
    assert result.success, result.error_in_exec
    assert isinstance(ip.user_ns["answer"], dict) and "not valid JSON" not in captured.stdout
    text = llama_server.chat([{"role": "user", "content": prompt}], 16, response_format={"type": "json_object"})
    assert ip.user_ns["answer"] == json.loads(text)


def test_embed_equals_the_openai_client(on_llama, llama_server):
    ip = on_llama
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "The cat sat on the mat."]
    ip.user_ns["texts"] = texts
    captured, result = run(ip, "%embed texts --out vectors")
    assert result.success, result.error_in_exec
    assert EMBED in captured.stdout  # the default: the listed model with "embed" in its name
    reference = np.array([row.embedding for row in llama_server.client().embeddings.create(model=EMBED,
                                                                                            input=texts).data])
    vectors = ip.user_ns["vectors"]
    assert vectors.shape == reference.shape == (3, 576)
    cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # normalised here
    raw = ip.run_line_magic("embed", f"texts -m {EMBED} --no-normalize")
    np.testing.assert_allclose(raw, reference, rtol=1e-4, atol=1e-4)  # as the server sent them


def test_runtime_commands_say_there_is_no_runtime_api(on_llama, llama_server):
    ip = on_llama
    base = llama_server.url + "/"
    for magic, line in [("runtime", f"load {CHAT}"), ("runtime", f"unload {CHAT}"),
                        ("runtime", f"alias x {SMOLLM}"), ("rerank", "'cats' ['a cat', 'a car']"),
                        ("classify", "['great game'] --labels sports,politics")]:
        message = one_line_error(ip, magic, line)
        assert NO_API in message and base in message, (magic, line, message)
    assert "%runtime load needs universal-kernel's runtime API" in one_line_error(ip, "runtime", f"load {CHAT}")
    with pytest.raises(NoRuntimeApi):
        get_magics(ip).remote_runtime().anomaly_models()
    _, result = run(ip, "%runtime models")
    assert [m["id"] for m in result.result] == [CHAT, EMBED]


def test_status_and_monitor_show_the_latencies_the_client_measured(on_llama, llama_server):
    ip = on_llama
    run(ip, f"%%generate --temperature 0 --max-tokens 4\n{FRANCE}")
    run(ip, "%embed 'one text'")
    _, result = run(ip, "%runtime status")
    status = result.result
    assert status["models"] == [] and "without universal-kernel's runtime API" in status["note"]
    last = status["recent"][-2:]
    assert [r["kind"] for r in last] == ["generate", "embed"] and [r["model"] for r in last] == [CHAT, EMBED]
    assert last[0]["ttft_s"] > 0 and last[0]["completion_tokens"] <= 4 and last[1]["total_s"] > 0
    assert last[0]["queue_wait_s"] is None  # the server's queue is not seen from here: shown as "-"
    text = repr(status)
    assert text.startswith(status["note"]) and "requests measured by this client" in text and CHAT in text

    _, result = run(ip, "%runtime monitor --interval 60")
    monitor = result.result
    try:
        assert monitor.source_name == "server" and monitor.loaded == [] and not monitor.error
        assert monitor.latencies[-2:] == [last[0]["ttft_s"], last[1]["total_s"]]
        assert "measured by this client" in monitor._memory.value and "<svg" in monitor._plot.value
        run(ip, f"%%generate --temperature 0 --max-tokens 2\n{FRANCE}")
        monitor.refresh()
        assert monitor.recent[-1]["completion_tokens"] <= 2
        assert monitor.latencies[-1] == monitor.recent[-1]["ttft_s"] > 0
    finally:
        monitor.close()


def test_a_failed_use_leaves_the_magics_where_they_were_and_says_so(ip, llama_server):
    magics = get_magics(ip)

    def local_requests() -> int:  # every request the in-process runtime's models served (status's list is capped)
        return sum(m["figures"]["requests"] for m in magics.local_runtime().status()["models"])

    before = local_requests()
    # from the in-process runtime: a wrong key, then a URL that is no OpenAI base
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("runtime", f"use server {llama_server.url} --token wrong")
    message = str(info.value)
    assert "refused the token" in message and "magics still use the in-process runtime" in message
    assert "\n" not in message and not magics.use_server
    root = llama_server.url[:-len("v1")]
    with pytest.raises(UsageError, match="neither a Jupyter server with universal-kernel .* an OpenAI base URL "
                                         "ends in /v1; magics still use the in-process runtime"):
        ip.run_line_magic("runtime", f"use server {root} --token {KEY}")
    captured, result = run(ip, f"%%generate --temperature 0 --max-tokens 2\n{FRANCE}")
    assert result.success and "(server)" not in captured.outputs[-1].data["text/plain"]
    assert local_requests() > before  # it ran here

    # from llama-cpp-python's server: a wrong key keeps it
    run(ip, f"%runtime use server {llama_server.url} --token {KEY}")
    remote = magics.remote_runtime()
    try:
        with pytest.raises(UsageError, match=f"refused the token.*magics still use the server at "
                                             f"{llama_server.url}/$"):
            ip.run_line_magic("runtime", f"use server {llama_server.url} --token wrong")
        with pytest.raises(ServerUnavailable, match="refused the token"):
            magics.remote_runtime(llama_server.url, "wrong")  # --server's reconnect: probed before it replaces
        assert magics.use_server and magics.remote_runtime() is remote
        before = len(remote.requests)
        captured, result = run(ip, f"%%generate --temperature 0 --max-tokens 2\n{FRANCE}")
        assert result.success and CHAT in captured.outputs[-1].data["text/plain"]
        assert len(remote.requests) == before + 1  # it still went to llama-cpp-python's server
    finally:
        run(ip, "%runtime use local")


# A second Jupyter server with this extension ------------------------------------------------------------
def test_use_a_jupyter_server_with_the_extension(ip, server, llama_server):
    magics = get_magics(ip)
    run(ip, f"%runtime use server {llama_server.url} --token {KEY}")  # elsewhere first
    try:
        # its URL as Jupyter's, or as the OpenAI base an `openai` client takes: both find the runtime API
        captured, result = run(ip, f"%runtime use server {server.url}universal/v1 --token {TOKEN}")
        assert result.success, result.error_in_exec
        assert f"the Jupyter server's runtime at {server.url}" in captured.stdout
        remote = magics.remote_runtime()
        assert remote.has_runtime_api and remote.base == server.url
        assert remote.default_generation_model == SMOLLM and remote.default_embedding_model == MINILM

        requests_before = server.model_status(SMOLLM)["figures"]["requests"]
        _, result = run(ip, f"%%generate --temperature 0 --max-tokens 8 --out there\n{FRANCE}")
        assert result.success, result.error_in_exec
        reply = server.post("universal/v1/chat/completions", {
            "model": SMOLLM, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 8})
        assert ip.user_ns["there"] == reply.json()["choices"][0]["message"]["content"]
        assert server.model_status(SMOLLM)["figures"]["requests"] == requests_before + 2  # ours, then the check

        vectors = ip.run_line_magic("embed", "['a vector from the far server']")
        assert vectors.shape == (1, 384) and abs(float(np.linalg.norm(vectors[0])) - 1) < 1e-4
        _, table = run(ip, "%rerank 'Where is Paris?' ['Paris is in France.', 'Bananas are yellow.']")
        assert table.success and table.result.iloc[0]["document"] == "Paris is in France."
        _, result = run(ip, "%runtime status")
        assert any(m["id"] == MINILM for m in result.result["models"]) and "note" not in result.result
        with pytest.raises(UsageError, match="refused the token.*magics still use the server at " + server.url):
            ip.run_line_magic("runtime", f"use server {server.url} --token wrong")
    finally:
        run(ip, "%runtime use local")
    assert not magics.use_server


def test_connect_tells_the_two_kinds_apart(server, llama_server):
    for url in (server.url, server.url + "universal/v1", server.url[:-1]):
        remote = RemoteRuntime.connect(url, TOKEN)
        assert remote.has_runtime_api and remote.openai_base == server.url + "universal/v1/", url
    remote = RemoteRuntime.connect(llama_server.url, KEY, default_generation_model="configured")
    assert not remote.has_runtime_api and remote.openai_base == llama_server.url + "/"
    assert (remote.default_generation_model, remote.default_embedding_model) == ("configured", EMBED)
    port = free_port()  # nothing listens there: said at once, with the URL
    with pytest.raises(ServerUnavailable, match=f"cannot reach the server at http://127.0.0.1:{port}/v1/"):
        RemoteRuntime.connect(f"http://127.0.0.1:{port}/v1", KEY)
