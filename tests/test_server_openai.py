"""The OpenAI API on a real `jupyter server` process, through the official `openai` client.

One server per session, both default models preloaded once; generations are kept short. What the
tiny model answers depends on the CPU (SPEC §6): texts are compared with the runtime, raw
llama-cpp-python and the other doors on the same machine, never with an answer written here.
"""

from __future__ import annotations

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import numpy as np
import openai
import pytest

from universal_kernel.magics import get_magics

from .conftest import BODY_LIMIT, FRANCE, MINILM, PARALLEL, QUEUE_LENGTH, SMOLLM, TOKEN, Server, wait_for
from .magics_support import ip, run  # noqa: F401
from .test_generation_llama import raw_chat, stop_word

# `server` (one real `jupyter server` per session, both default models preloaded) is in tests/conftest.py.


@pytest.fixture
def client(server):
    return server.client()


def _france(**kwargs) -> dict:
    return {"model": SMOLLM, "messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 16,
            **kwargs}


@pytest.fixture(scope="module")
def france(runtime) -> object:
    """The in-process runtime's greedy Completion for `_france()`: what the server must answer on this machine."""
    return runtime.generate(SMOLLM, messages=_france()["messages"], params={"temperature": 0, "max_tokens": 16})


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
def test_chat_completion(client, france):
    reply = client.chat.completions.create(**_france())
    choice = reply.choices[0]
    assert choice.message.content and choice.message.content == france.text
    assert choice.message.role == "assistant" and choice.finish_reason == france.finish_reason
    assert choice.finish_reason in ("stop", "length")
    assert reply.object == "chat.completion" and reply.model == SMOLLM and reply.id.startswith("chatcmpl-")
    usage = reply.usage
    assert usage.prompt_tokens == france.prompt_tokens > 5
    assert usage.completion_tokens == france.completion_tokens and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_matches_non_stream_and_sends_usage(client):
    whole = client.chat.completions.create(**_france())
    chunks = list(client.chat.completions.create(**_france(), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage: no usage chunk
    plain = list(client.chat.completions.create(**_france(), stream=True))
    assert all(c.choices for c in plain) and all(c.usage is None for c in plain)


def test_chat_max_tokens_length_stop_and_text_parts(client, france):
    reply = client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": [{"type": "text", "text": FRANCE}]}], temperature=0,
        max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert france.text.startswith(reply.choices[0].message.content)  # the first 3 tokens of the greedy text
    word = stop_word(france.text)  # from this machine's own greedy text
    for stop in ([word], word, ["zzz", word]):
        stopped = client.chat.completions.create(**_france(), stop=stop)
        assert stopped.choices[0].message.content == france.text[: france.text.index(word)]
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
    jsonschema.validate(value, schema)  # keys and types; what the tiny model names depends on the CPU
    assert reply.choices[0].finish_reason == "stop"
    anything = client.chat.completions.create(model=SMOLLM, temperature=0, max_tokens=48, messages=question,
                                              response_format={"type": "json_object"})
    assert isinstance(json.loads(anything.choices[0].message.content), dict)


# Errors -------------------------------------------------------------------------------------------------
def _no_retry(exc: openai.APIStatusError) -> None:
    assert exc.response.headers.get("x-should-retry") == "false"
    assert set(exc.body) == {"message", "type", "param", "code"}  # the client unwraps {"error": ...}
    assert "Traceback" not in exc.response.text


def test_errors_through_client_exception_types(client, server, france):
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
        client.chat.completions.create(**_france(n=0))
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

    # nothing above killed the server, nor changed what it answers
    assert client.chat.completions.create(**_france()).choices[0].message.content == france.text


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
    """Jupyter answers while a model loads: a status taken during the load shows the load under way.

    A warm MiniLM load can be shorter than one status request: each try unloads and loads again, until a
    status lands inside a load (a load on the event loop would never let one through).
    """
    def answered_during_a_load() -> bool:
        assert server.post("universal/api/unload", {"model": MINILM}).json()["results"] == ["unloaded"]
        seen_loading = False
        with ThreadPoolExecutor(1) as pool:
            loading = pool.submit(server.post, "universal/api/load", {"model": MINILM, "keep_alive": -1})
            while not loading.done():
                assert server.get("api/status").status_code == 200  # Jupyter's own handler
                status = server.status()
                seen_loading |= (status["budget"]["loading_bytes"] > 0
                                 and all(m["id"] != MINILM for m in status["models"]))
        assert loading.result().status_code == 200, loading.result().text
        assert loading.result().json()["load_s"] > 0
        return seen_loading

    wait_for(answered_during_a_load, 600, "no status was answered while MiniLM loaded")
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
    model = wait_for(lambda: (m := server.model_status(SMOLLM))["figures"]["cancelled"] == before + 1
                     and not m["running"] and m["active"] == 0 and m,
                     120, lambda: f"the closed stream was not cancelled: {server.model_status(SMOLLM)}")
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




def test_full_queue_is_429_with_retry_after_and_dropped_clients_free_it(client, server, france):
    cancelled = server.model_status(SMOLLM)["figures"]["cancelled"]
    sockets = [_open_stream(server, _long(f"Tell me story number {i} about a dragon."))
               for i in range(PARALLEL + QUEUE_LENGTH)]
    try:
        wait_for(lambda: server.model_status(SMOLLM)["queue_depth"] == PARALLEL + QUEUE_LENGTH, 120,
                 lambda: f"queue not full: {server.model_status(SMOLLM)}")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**_france())
        assert int(info.value.response.headers["Retry-After"]) >= 1
        assert info.value.response.headers.get("x-should-retry") != "false"  # a retry can fix it
        assert info.value.body["code"] == "model_busy"
    finally:
        for sock in sockets:
            sock.close()
    model = wait_for(lambda: (m := server.model_status(SMOLLM))["queue_depth"] == 0 and m["active"] == 0 and m,
                     120, lambda: f"dropped clients did not free the queue: {server.model_status(SMOLLM)}")
    assert model["figures"]["cancelled"] > cancelled  # the running ones, at least
    assert client.chat.completions.create(**_france()).choices[0].message.content == france.text


def test_four_concurrent_streams_while_jupyter_answers(client, server):
    # Unlike prompts, so that a stream given another's text would show; their answers are not checked.
    questions = [FRANCE, "Count from one to ten.", "Write a haiku about snow.", "Say hello in three languages."]
    expected = [client.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=12,
    ).choices[0].message.content for q in questions]
    assert all(expected)

    def run(question: str) -> str:
        stream = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": question}],
                                                temperature=0, max_tokens=12, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    decoding = []  # the sequences the model ran at each answer of Jupyter's own status
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run, q) for q in questions]
        while not all(f.done() for f in futures):
            assert server.get("api/status").status_code == 200
            decoding.append(server.model_status(SMOLLM)["sequences"])
        texts = [f.result() for f in futures]
    assert texts == expected
    assert max(decoding, default=0) >= 1, decoding  # Jupyter answered while the streams decoded


# One prompt through every door -------------------------------------------------------------------------
def test_every_door_gives_the_text_of_raw_llama_cpp(runtime, raw_llama, server, client, ip, monkeypatch):
    """One greedy prompt: the runtime, raw llama-cpp-python, the HTTP API (official client, streamed or
    not), `%%generate` on the kernel's runtime and `%%generate --server` give one text, and one usage."""
    messages = [{"role": "user", "content": FRANCE}]
    ours = runtime.generate(SMOLLM, messages=messages, params={"temperature": 0, "max_tokens": 24})
    raw = raw_chat(raw_llama, messages, temperature=0.0, max_tokens=24)
    assert ours.text and ours.text == raw["choices"][0]["message"]["content"]
    assert ours.finish_reason == raw["choices"][0]["finish_reason"]

    http = client.chat.completions.create(model=SMOLLM, messages=messages, temperature=0, max_tokens=24)
    assert http.choices[0].message.content == ours.text
    assert http.choices[0].finish_reason == ours.finish_reason
    usage = (ours.prompt_tokens, ours.completion_tokens)
    assert (http.usage.prompt_tokens, http.usage.completion_tokens) == usage
    assert (raw["usage"]["prompt_tokens"], raw["usage"]["completion_tokens"]) == usage
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=SMOLLM, messages=messages, temperature=0, max_tokens=24, stream=True) if c.choices)
    assert streamed == ours.text

    magics = get_magics(ip)
    _, result = run(ip, f"%%generate --temperature 0 --max-tokens 24 --out local_text\n{FRANCE}")
    assert result.success, result.error_in_exec
    assert ip.user_ns["local_text"] == ours.text

    # `--server` finds the server as configured (`c.UniversalKernelMagics.server_url`, `server_token`)
    monkeypatch.setattr(magics, "_remote", None)  # no server remembered from an earlier test
    monkeypatch.setattr(magics, "server_url", server.url)
    monkeypatch.setattr(magics, "server_token", TOKEN)
    before = server.model_status(SMOLLM)["figures"]["requests"]
    _, result = run(ip, f"%%generate --server --temperature 0 --max-tokens 24 --out server_text\n{FRANCE}")
    assert result.success, result.error_in_exec
    assert ip.user_ns["server_text"] == ours.text
    assert server.model_status(SMOLLM)["figures"]["requests"] == before + 1  # it ran on the server
    assert magics.last_generation.completion_tokens == ours.completion_tokens
