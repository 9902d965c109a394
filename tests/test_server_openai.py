"""The OpenAI API on a real `jupyter server` process, through the official `openai` client.

One server per session, both default models preloaded once; generations are kept short.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest
import requests

from .conftest import FRANCE, MINILM, SMOLLM

TOKEN = "universal-kernel-test-token"
BODY_LIMIT = 2**20
QUEUE_LENGTH = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, port: int, process: subprocess.Popen, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.process = process
        self.log = log

    def get(self, path: str, token: str | None = TOKEN, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, body=None, token: str | None = TOKEN, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        return requests.post(self.url + path, data=data, headers=headers, timeout=kwargs.pop("timeout", 120),
                             **kwargs)

    def status(self) -> dict:
        response = self.get("universal/api/status")
        response.raise_for_status()
        return response.json()

    def model_status(self, model_id: str) -> dict | None:
        return next((m for m in self.status()["models"] if m["id"] == model_id), None)

    def client(self, token: str = TOKEN, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(api_key=token, base_url=self.url + "universal/v1", max_retries=0, timeout=120,
                             **kwargs)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def server(smollm_path, minilm_path, tmp_path_factory):
    """`jupyter server` with the extension, as a user would start it, both default models preloaded."""
    root = tmp_path_factory.mktemp("server-root")
    home = tmp_path_factory.mktemp("server-jupyter")
    port = _free_port()
    log = home / "server.log"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               UNIVERSAL_KERNEL_CONVERT_CACHE=str(home / "converted"))
    command = [
        sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
        f'--UniversalKernelApp.preload=["{SMOLLM}", "{MINILM}"]',  # as the README writes it
        "--UniversalKernelApp.keep_alive=-1", f"--UniversalKernelApp.max_body_size={BODY_LIMIT}",
        f"--UniversalKernelApp.queue_length={QUEUE_LENGTH}",
        # one thread: the machines that run this suite are small and busy; llama.cpp's threads spin
        "--UniversalKernelApp.threads=1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    srv = Server(port, process, log)
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter server exited with {process.returncode}:\n{srv.log_tail()}")
            try:
                models = srv.status()["models"]
                if {m["id"] for m in models} >= {SMOLLM, MINILM}:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not load the default models in time:\n{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def client(server):
    return server.client()


def _france(**kwargs) -> dict:
    return {"model": SMOLLM, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 16,
            **kwargs}


def _requests(server: Server) -> int:
    """Requests the runtime has served or refused, over every loaded model."""
    return sum(m["figures"]["requests"] + m["active"] for m in server.status()["models"])


# Models -------------------------------------------------------------------------------------------------
def test_models_list_and_retrieve(client):
    models = {m.id: m for m in client.models.list()}
    assert {SMOLLM, MINILM} <= set(models)
    assert models[SMOLLM].object == "model" and models[SMOLLM].owned_by == "universal-kernel"
    assert models[SMOLLM].loaded is True and models[SMOLLM].task == "generate"
    assert models[MINILM].task == "embed"
    one = client.models.retrieve(SMOLLM)
    assert one.id == SMOLLM and one.loaded is True
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found"


# Chat ---------------------------------------------------------------------------------------------------
def test_chat_completion(client):
    reply = client.chat.completions.create(**_france())
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.model == SMOLLM and reply.id.startswith("chatcmpl-")
    usage = reply.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_matches_non_stream_and_sends_usage(client):
    whole = client.chat.completions.create(**_france())
    chunks = list(client.chat.completions.create(**_france(), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage: no usage chunk
    plain = list(client.chat.completions.create(**_france(), stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_chat_max_tokens_length_stop_and_text_parts(client):
    reply = client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": [{"type": "text", "text": FRANCE}]}], temperature=0,
        max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and 0 < reply.usage.completion_tokens <= 3
    stopped = client.chat.completions.create(**_france(), stop=["Paris"])
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"


def test_sse_wire_format(server):
    response = server.post("universal/v1/chat/completions", _france(stream=True), stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


# Completions --------------------------------------------------------------------------------------------
def test_completions(client):
    reply = client.completions.create(model=SMOLLM, prompt="The capital of France is", max_tokens=6,
                                      temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text.strip()
    assert reply.choices[0].finish_reason == "length" and 0 < reply.usage.completion_tokens <= 6
    streamed = list(client.completions.create(model=SMOLLM, prompt="The capital of France is", max_tokens=6,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text
    assert streamed[-1].usage.model_dump() == reply.usage.model_dump()
    both = client.completions.create(model=SMOLLM, prompt=["The capital of France is", "One, two,"],
                                     max_tokens=4, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == reply.choices[0].text[: len(both.choices[0].text)]
    assert 4 < both.usage.completion_tokens <= 8  # counted by re-tokenizing the text


# Embeddings ---------------------------------------------------------------------------------------------
def test_embeddings_base64_default_equals_float(client, server):
    texts = ["The cat sits on the mat.", "Paris is the capital of France, a country in Europe."]
    by_default = client.embeddings.create(model=MINILM, input=texts)  # the client asks for base64
    as_float = client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
    a = np.array([d.embedding for d in by_default.data], dtype=np.float32)
    b = np.array([d.embedding for d in as_float.data], dtype=np.float32)
    assert a.shape == (2, 384)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert by_default.usage.prompt_tokens == as_float.usage.prompt_tokens > 10
    short = client.embeddings.create(model=MINILM, input="cat", encoding_format="float")
    assert 0 < short.usage.prompt_tokens < as_float.usage.prompt_tokens
    # on the wire: little-endian float32
    raw = server.post("universal/v1/embeddings", {"model": MINILM, "input": texts, "encoding_format": "base64"})
    row = np.frombuffer(base64.b64decode(raw.json()["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(row, b[1])


def test_embeddings_dimensions(client):
    full = client.embeddings.create(model=MINILM, input="dimensions", encoding_format="float").data[0].embedding
    cut = client.embeddings.create(model=MINILM, input="dimensions", dimensions=64).data[0].embedding
    assert len(cut) == 64
    expected = np.asarray(full[:64], dtype=np.float32)
    np.testing.assert_allclose(cut, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MINILM, input="x", dimensions=1000)
    assert info.value.body["param"] == "dimensions"


# Structured output --------------------------------------------------------------------------------------
def test_json_schema_response_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "is_capital": {"type": "boolean"}},
              "required": ["city", "is_capital"], "additionalProperties": False}
    question = [{"role": "user", "content": FRANCE + " Answer in JSON."}]
    reply = client.chat.completions.create(
        model=SMOLLM, temperature=0, max_tokens=48, messages=question,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, schema)
    assert value["city"] == "Paris"
    anything = client.chat.completions.create(model=SMOLLM, temperature=0, max_tokens=48, messages=question,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


# Errors -------------------------------------------------------------------------------------------------
def _no_retry(exc: openai.APIStatusError) -> None:
    assert exc.response.headers.get("x-should-retry") == "false"
    assert set(exc.body) == {"message", "type", "param", "code"}  # the client unwraps {"error": ...}
    assert "Traceback" not in exc.response.text


def test_errors_through_client_exception_types(client, server):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    _no_retry(info.value)
    assert info.value.body["param"] == "model" and info.value.body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=object, content=b'{"model": "x", "messages": [',
                    options={"headers": {"Content-Type": "application/json"}})
    _no_retry(info.value)
    assert info.value.body["code"] == "invalid_json"

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**_france(n=2))
    _no_retry(info.value)
    assert info.value.body["param"] == "n"

    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model=SMOLLM, prompt="x" * (BODY_LIMIT + 10), max_tokens=1)
    assert info.value.status_code == 413
    _no_retry(info.value)

    with pytest.raises(openai.BadRequestError) as info:  # an embedding model cannot chat
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}])
    _no_retry(info.value)
    with pytest.raises(openai.BadRequestError) as info:  # a path out of the model folders
        client.embeddings.create(model="../../etc/passwd", input="x")
    _no_retry(info.value)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**_france(temperature=7))
    assert info.value.body["param"] == "temperature"

    missing = server.get("universal/v1/no/such/route")
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}

    # nothing above killed the server
    assert "Paris" in client.chat.completions.create(**_france()).choices[0].message.content


def test_auth_failures_have_openai_bodies_and_touch_no_model(server):
    before = _requests(server)
    wrong = server.client(token="not-the-token")
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(**_france())
    _no_retry(info.value)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=MINILM, input="x")
    for path, body in [("universal/v1/chat/completions", _france()), ("universal/v1/embeddings",
                                                                        {"model": MINILM, "input": "x"}),
                       ("universal/api/load", {"model": SMOLLM})]:
        response = server.post(path, body, token=None)
        assert response.status_code == 401, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.headers["x-should-retry"] == "false"
    response = server.get("universal/v1/models", token=None)
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    assert _requests(server) == before
    assert server.process.poll() is None


# Runtime API --------------------------------------------------------------------------------------------
def test_runtime_api_load_unload(server, client):
    status = server.status()
    assert {"models", "memory", "recent"} <= set(status)
    loaded = server.post("universal/api/load", {"model": SMOLLM, "keep_alive": "10m"})
    assert loaded.status_code == 200 and loaded.json()["keep_alive"] == 600
    assert server.post("universal/api/load", {"model": "no-such-model"}).status_code == 404
    unloaded = server.post("universal/api/unload", {"model": SMOLLM})
    assert unloaded.json()["results"] == ["unloaded"]
    assert server.model_status(SMOLLM) is None
    assert not next(m for m in client.models.list() if m.id == SMOLLM).loaded  # servable, not loaded
    reloaded = server.post("universal/api/load", {"model": SMOLLM, "keep_alive": -1})
    assert reloaded.status_code == 200 and reloaded.json()["keep_alive"] == -1
    assert server.model_status(SMOLLM) is not None


def test_loading_runs_off_the_event_loop(server, client):
    assert server.post("universal/api/unload", {"model": MINILM}).json()["results"] == ["unloaded"]
    latencies = []
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(server.post, "universal/api/load", {"model": MINILM, "keep_alive": -1})
        while True:  # at least one probe, however fast the load (a warm MiniLM load can take 0.15 s)
            started = time.perf_counter()
            assert server.get("api/status", timeout=10).status_code == 200
            latencies.append(time.perf_counter() - started)
            if loading.done():
                break
            time.sleep(0.02)
    assert loading.result().status_code == 200, loading.result().text
    assert loading.result().json()["load_s"] > 0
    assert max(latencies) < 2.0, latencies
    assert client.embeddings.create(model=MINILM, input="back again").data[0].embedding


# Cancellation and concurrency ---------------------------------------------------------------------------
def _long(content: str = "Write a long story about a dragon who learns to read.", **kwargs) -> dict:
    return dict(model=SMOLLM, messages=[{"role": "user", "content": content}], max_tokens=400, temperature=0,
                stream=True, **kwargs)


def test_closed_stream_cancels_and_frees_the_model(client, server):
    before = server.model_status(SMOLLM)["figures"]["cancelled"]
    stream = client.chat.completions.create(**_long())
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 3:
            break
    stream.close()
    closed = time.monotonic()
    while True:
        model = server.model_status(SMOLLM)
        if model["figures"]["cancelled"] > before and not model["running"] and model["active"] == 0:
            break
        assert time.monotonic() - closed < 1.0, model
        time.sleep(0.02)
    assert model["figures"]["last"]["finish_reason"] == "cancelled"
    assert model["figures"]["last"]["completion_tokens"] < 400


def _open_stream(server: Server, body: dict) -> socket.socket:
    """A streaming request on a raw socket, so that the test can drop the connection at any time."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /universal/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_full_queue_is_429_with_retry_after_and_dropped_clients_free_it(client, server):
    sockets = [_open_stream(server, _long(f"Tell me story number {i} about a dragon.")) for i in range(1 + QUEUE_LENGTH)]
    try:
        _wait_for(lambda: server.model_status(SMOLLM)["queue_depth"] == 1 + QUEUE_LENGTH, 20, "queue not full")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**_france())
        assert int(info.value.response.headers["Retry-After"]) >= 1
        assert info.value.response.headers.get("x-should-retry") != "false"  # a retry can fix it
        assert info.value.body["code"] == "model_busy"
    finally:
        for sock in sockets:
            sock.close()
    model = _wait_for(lambda: (m := server.model_status(SMOLLM))["queue_depth"] == 0 and m["active"] == 0 and m,
                      5, "dropped clients did not free the queue")
    assert model["figures"]["cancelled"] >= 1
    assert "Paris" in client.chat.completions.create(**_france()).choices[0].message.content


def test_four_concurrent_streams_while_jupyter_answers(client, server):
    questions = [FRANCE, "Which city is the capital of Italy?", "Which city is the capital of Spain?",
                 "Which city is the capital of Germany?"]
    expected = [client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=12,
    ).choices[0].message.content for q in questions]
    assert len(set(expected)) == 4

    def run(question: str) -> str:
        stream = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": question}],
                                                temperature=0, max_tokens=12, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    latencies = []
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run, q) for q in questions]
        while not all(f.done() for f in futures):
            started = time.perf_counter()
            response = server.get("api/status", timeout=10)
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(0.05)
        texts = [f.result() for f in futures]
    assert texts == expected
    assert latencies and max(latencies) < 2.0, latencies
