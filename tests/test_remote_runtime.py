"""`RemoteRuntime` (what `--server` talks to) against a real `jupyter server`, and the runtime's own edges.

The server is the session's (tests/conftest.py: both default models preloaded, a queue of 3, one
thread). Generations are short and greedy.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from universal_kernel import (
    Busy, GenerationFailed, InvalidRequest, ModelNotFound, ReferenceRefused, Runtime, RuntimeConfig, WrongTask,
)
from universal_kernel.client import RemoteError, RemoteRuntime, ServerUnavailable
from universal_kernel.wire import ERRORS, error_from_wire, retry_after_seconds

from .conftest import FRANCE, MINILM, PARALLEL, QUEUE_LENGTH, SMOLLM, TOKEN, stop_process, wait_for

GREEDY = {"temperature": 0, "max_tokens": 16}


@pytest.fixture
def remote(server) -> RemoteRuntime:
    return RemoteRuntime(server.url, TOKEN, timeout=120)




def _open_raw(server, path: str, body: dict) -> socket.socket:
    """A streaming request on a raw socket: it holds the model's slot until the test closes it."""
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(f"POST /universal/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _story(max_tokens: int) -> dict:
    """A request that keeps the model busy: a greedy story does not end early."""
    return {"model": SMOLLM, "messages": [{"role": "user", "content": "Write a long story about a dragon who "
                                                                        "learns to read."}],
            "max_tokens": max_tokens, "temperature": 0}


def _smollm_idle(server):
    return wait_for(lambda: (m := server.model_status(SMOLLM)) and m["queue_depth"] == 0 and m["active"] == 0 and m,
                     30, "SmolLM2 did not become idle")


# A prompt is a raw completion, on both sides ----------------------------------------------------------------
def test_a_prompt_is_a_raw_completion_locally_and_remotely(runtime, remote, server):
    prompt = "Once upon a time"
    local = runtime.generate(SMOLLM, prompt=prompt, params=GREEDY)
    far = remote.generate(SMOLLM, prompt=prompt, params=GREEDY)
    assert far.text == local.text and far.text
    assert far.finish_reason == local.finish_reason
    # the same tokens went in: a chat turn would have added the chat template's tokens
    assert far.prompt_tokens == local.prompt_tokens < 10
    assert far.completion_tokens == local.completion_tokens
    recent = server.status()["recent"]
    assert recent[-1]["prompt_tokens"] == local.prompt_tokens

    # messages stay a chat turn on both sides
    messages = [{"role": "user", "content": FRANCE}]
    local_chat = runtime.generate(SMOLLM, messages=messages, params=GREEDY)
    far_chat = remote.generate(SMOLLM, messages=messages, params=GREEDY)
    assert far_chat.text == local_chat.text and far_chat.prompt_tokens == local_chat.prompt_tokens > 10

    with pytest.raises(InvalidRequest, match="either a prompt or messages"):
        remote.stream(SMOLLM, prompt=prompt, messages=messages)


def test_no_token_limit_stays_no_limit_for_a_remote_prompt(remote, server):
    """/v1/completions defaults to 16 tokens (OpenAI); the runtime's max_tokens=None means no limit."""
    with remote.stream(SMOLLM, prompt="Once upon a time", params={"temperature": 0, "max_tokens": None}) as stream:
        pieces = []
        for piece in stream:
            pieces.append(piece)
            if len(pieces) == 24:
                break  # past 16: enough; closing the stream cancels the rest on the server
    assert len(pieces) == 24 or (stream.completion and stream.completion.finish_reason == "stop"), pieces
    _smollm_idle(server)


# Backend and load options: carried or refused, never dropped ---------------------------------------------
def test_backend_is_carried_and_load_options_are_refused(runtime, remote, server):
    # a backend that cannot serve the model: the server's answer proves it was sent (it used to be dropped)
    for call in (lambda rt: rt.embed(["backend probe"], MINILM, backend="llama_cpp"),
                 lambda rt: rt.load(MINILM, backend="llama_cpp"),
                 lambda rt: rt.generate(SMOLLM, prompt="Hi", params=GREEDY, backend="no-such-backend")):
        with pytest.raises(InvalidRequest) as local_error:
            call(runtime)
        with pytest.raises(InvalidRequest) as remote_error:
            call(remote)
        assert type(remote_error.value) is type(local_error.value)
        assert remote_error.value.param == "backend" and str(remote_error.value) == str(local_error.value)

    # unload carries its backend: no llama_cpp instance of MiniLM, so nothing is unloaded
    assert remote.unload(MINILM, backend="llama_cpp")["results"] == []
    assert server.model_status(MINILM) is not None

    before = server.status()["loads"]
    with pytest.raises(InvalidRequest, match="cannot take n_ctx") as refused:
        remote.load(SMOLLM, n_ctx=512)
    assert refused.value.param == "n_ctx"
    with pytest.raises(InvalidRequest, match="cannot take task"):
        remote.load(SMOLLM, task="generate")
    assert server.status()["loads"] == before  # nothing was sent, nothing loaded


# Errors keep their type over HTTP ----------------------------------------------------------------------
def test_errors_come_back_as_the_runtime_raised_them(runtime, remote, server):
    cases = [
        (lambda rt: rt.embed(["not an embedding model"], SMOLLM), WrongTask),
        (lambda rt: rt.generate(MINILM, prompt="Hi", params=GREEDY), WrongTask),
        (lambda rt: rt.generate("no-such-model", prompt="Hi", params=GREEDY), ModelNotFound),
        (lambda rt: rt.generate("../../etc/passwd.gguf", prompt="Hi", params=GREEDY), (ReferenceRefused,
                                                                                        ModelNotFound)),
    ]
    for call, expected in cases:
        with pytest.raises(expected) as local_error:
            call(runtime)
        with pytest.raises(expected) as remote_error:
            call(remote)
        # (messages may name the model folders, which differ between the two runtimes)
        assert type(remote_error.value) is type(local_error.value), remote_error.value
        assert remote_error.value.param == local_error.value.param == "model"

    with pytest.raises(ServerUnavailable, match="refused the token"):
        RemoteRuntime(server.url, "wrong-token").models()
    with pytest.raises(RemoteError) as no_route:  # a route the server does not have: no runtime error
        remote._json("GET", "api/no-such-route")
    assert no_route.value.status == 404 and no_route.value.code == "not_found"


def test_a_full_queue_is_busy_with_retry_after_over_http(remote, server):
    _smollm_idle(server)
    sockets = [_open_raw(server, "v1/chat/completions", _story(400)) for _ in range(PARALLEL + QUEUE_LENGTH)]
    try:
        wait_for(lambda: server.model_status(SMOLLM)["queue_depth"] == PARALLEL + QUEUE_LENGTH, 60,
                  lambda: f"queue not full: {server.model_status(SMOLLM)}\n{server.log_tail()}")
        with pytest.raises(Busy) as busy:
            remote.generate(SMOLLM, prompt="Hi", params=GREEDY)
        assert type(busy.value) is Busy and busy.value.retry_after >= 1
        with pytest.raises(Busy):
            remote.generate(SMOLLM, messages=[{"role": "user", "content": FRANCE}], params=GREEDY)
    finally:
        for sock in sockets:
            sock.close()
    _smollm_idle(server)


def test_the_wire_table_maps_every_runtime_error_both_ways():
    for row in ERRORS:
        exc = row.error("message", **({"retry_after": 7.0} if row.error is Busy else {}))
        back = error_from_wire({"message": "message", "code": row.code, "param": "model"}, status=row.status,
                               headers={"Retry-After": "7"})
        assert type(back) is row.error and back.param == "model" and str(back) == "message"
        if row.error is Busy:
            assert back.retry_after == 7.0 and exc.retry_after == 7.0
    # a body's retry_after wins over the header; an unknown code falls back to the status
    assert error_from_wire({"message": "m", "code": "model_busy", "retry_after": 2.5}, status=429,
                           headers={"Retry-After": "9"}).retry_after == 2.5
    assert type(error_from_wire({"message": "m", "code": "something_else"}, status=429)) is Busy
    assert error_from_wire({"message": "m", "code": None}, status=500) is None
    assert error_from_wire({"message": "no such route", "code": "not_found"}, status=404) is None  # no model
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_seconds("x") is None
    # the server sends exactly this table
    from universal_kernel.server_ext.errors import failure_from

    for row in ERRORS:
        sent = failure_from(row.error("message"))
        assert (sent.status, sent.body.error.type, sent.body.error.code) == (row.status, row.type, row.code)


# Tokens/s counts from the first token --------------------------------------------------------------------
def test_remote_tokens_per_s_is_measured_from_the_first_token(remote, server):
    _smollm_idle(server)
    blockers = [_open_raw(server, "v1/chat/completions", _story(400)) for _ in range(PARALLEL)]
    try:
        wait_for(lambda: server.model_status(SMOLLM)["sequences"] == PARALLEL, 120,
                 lambda: f"the blocking requests did not start: {server.model_status(SMOLLM)}")
        with ThreadPoolExecutor(1) as pool:
            # every slot is taken: this request waits in the queue until the blockers go
            waiting = pool.submit(remote.generate, SMOLLM, prompt="The weather today",
                                  params={"temperature": 0, "max_tokens": 24})
            wait_for(lambda: server.model_status(SMOLLM)["queue_depth"] == PARALLEL + 1 or waiting.done(), 120,
                     lambda: f"the request did not reach the queue: {server.model_status(SMOLLM)}")
            assert not waiting.done(), waiting.result()
            for blocker in blockers:
                blocker.close()
            done = waiting.result(timeout=300)
    finally:
        for blocker in blockers:
            blocker.close()
    stats, n = done.stats, done.completion_tokens
    assert n >= 8
    ours = next(s for s in reversed(server.status()["recent"])
                if s["kind"] == "generate" and s["finish_reason"] == done.finish_reason
                and (s["prompt_tokens"], s["completion_tokens"]) == (done.prompt_tokens, n))
    assert ours["queue_wait_s"] > 0  # it waited: seen in the queue above
    # the client's time to first token holds the server's queue wait, and its rate is the decoding's alone:
    # the tokens after the first over the time since the first (the old figure divided by the queue wait too)
    assert stats.ttft_s > ours["queue_wait_s"]
    assert stats.tokens_per_s == pytest.approx((n - 1) / (stats.total_s - stats.ttft_s))
    _smollm_idle(server)


# The runtime's own edges ---------------------------------------------------------------------------------
def test_astream_refuses_a_misspelled_keyword(runtime):
    async def start(**kwargs):
        stream = await runtime.astream(SMOLLM, **kwargs)
        return await stream.result()

    with pytest.raises(TypeError, match="promt"):
        asyncio.run(start(promt="Hi", params=GREEDY))
    with pytest.raises(TypeError, match="max_token"):
        asyncio.run(start(prompt="Hi", max_token=3))
    done = asyncio.run(start(prompt="Hi", params={"temperature": 0, "max_tokens": 3}))
    assert done.completion_tokens == 3


def test_aembed_fails_instead_of_hanging_when_the_worker_died(minilm_path, tmp_path):
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], keep_alive=-1, stream_poll_s=0.2), reaper=False)
    try:
        rt.load(MINILM)
        entry = next(e for e in rt.cache.entries() if e.spec.id == MINILM)
        entry.worker.stop()  # the model's worker thread ends; the cache still lists the model
        assert not entry.worker.thread.is_alive()

        async def embed():  # a hang would end in TimeoutError, not in the runtime's error
            return await asyncio.wait_for(rt.aembed(["a worker that is gone"], MINILM), timeout=300)

        with pytest.raises(GenerationFailed, match="stopped"):
            asyncio.run(embed())
        with pytest.raises(GenerationFailed, match="stopped"):  # the synchronous form, as before
            rt.embed(["a worker that is gone"], MINILM)
    finally:
        rt.close()


def test_dead_code_is_gone():
    from universal_kernel.cache import ModelCache

    assert not hasattr(Runtime, "count_tokens") and not hasattr(ModelCache, "get")


# `universal_kernel` itself as the server extension's name -----------------------------------------------
def _start_server(tmp_path, *extra: str):
    token = "toplevel-test-token"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTER_TOKEN=token, HF_HUB_OFFLINE="1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", f"--ServerApp.root_dir={tmp_path}", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    return process, f"http://127.0.0.1:{port}/", {"Authorization": f"Bearer {token}"}, log




def _probe(process, url, headers, log, path="universal/v1/models", ready=lambda r: r.status_code == 200):
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            response = requests.get(url + path, headers=headers, timeout=10)
            if response.status_code != 404 and ready(response):  # 404 until the extension is up
                return response
            if response.status_code == 404 and "Jupyter Server" in response.text:
                # jupyter's own 404 page: the server is up and the extension's route is not there
                assert False, "the extension's routes are missing:\n" + log.read_text()[-3000:]
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def test_universal_kernel_itself_enables_the_server_extension(tmp_path):
    process, url, headers, log = _start_server(tmp_path, "--ServerApp.jpserver_extensions=universal_kernel=True")
    try:
        listed = _probe(process, url, headers, log).json()
        assert {SMOLLM, MINILM} <= {m["id"] for m in listed["data"]}
    finally:
        stop_process(process)
    text = log.read_text()
    assert text.count("universal_kernel.server_ext | extension was successfully loaded") == 1
    assert "failed loading" not in text and "_load_jupyter_server_extension" not in text


def test_both_names_enabled_serve_one_runtime(tmp_path, minilm_path):
    process, url, headers, log = _start_server(
        tmp_path, "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
        "--ServerApp.jpserver_extensions=universal_kernel=True", f'--UniversalKernelApp.preload=["{MINILM}"]')
    try:
        _probe(process, url, headers, log, "universal/api/status",
               ready=lambda r: r.status_code == 200 and any(m["id"] == MINILM for m in r.json()["models"]))
        time.sleep(1.0)  # a second copy of the extension would preload now, or fail to
    finally:
        stop_process(process)
    text = log.read_text()
    assert text.count("universal_kernel | extension was successfully loaded") == 1  # the name that enables
    assert text.count("universal_kernel.server_ext | extension was successfully loaded") == 1  # the extension
    assert text.count(f"universal_kernel: loaded {MINILM}") == 1, text
    assert "could not preload" not in text and "failed loading" not in text


def test_load_ext_imports_no_server_library():
    code = ("import sys, universal_kernel; from universal_kernel import magics; "
            "print(sorted(m for m in ('jupyter_server', 'tornado', 'torch', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
