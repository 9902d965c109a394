"""The handlers and the serving layer inside an in-process Jupyter server (pytest_jupyter), with a fake
runtime: the failures that real models cannot be made to produce on demand (a failure after streaming
began, an unexpected exception), the error table, and authorization against this extension's resource.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from jupyter_server.auth import Authorizer

from universal_kernel.errors import (
    BackendUnavailable, Busy, GenerationFailed, InvalidRequest, LoadFailed, MemoryBudgetExceeded, ModelNotFound,
    ReferenceRefused, WrongTask,
)
from universal_kernel.server_ext.handlers import AUTH_RESOURCE, SERVING_SETTING
from universal_kernel.server_ext.serving import failure_from, keep_alive_seconds

# pytest_jupyter's fixtures, imported for this module only: registering the plugin for the session
# (pytest_plugins) would put its autouse event-loop and server-cleanup fixtures on every other test.
from pytest_jupyter.jupyter_server import *  # noqa: E402,F403



class DenyWhenAsked(Authorizer):
    """Refuses this extension's resource to requests that carry `X-Test-Deny`."""

    def is_authorized(self, handler, user, action, resource):
        return not (resource == AUTH_RESOURCE and handler.request.headers.get("X-Test-Deny"))


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"universal_kernel.server_ext": True},
                          "authorizer_class": DenyWhenAsked}}


class FakeStream:
    def __init__(self, pieces, error=None):
        self.model = "fake-model"
        self.pieces = list(pieces)
        self.error = error
        self.completion = None
        self.closed = False
        self.request = SimpleNamespace(cancel=lambda: None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0)
        if self.pieces:
            return self.pieces.pop(0)
        if self.error is not None:
            raise self.error
        self.completion = SimpleNamespace(finish_reason="stop", prompt_tokens=3, completion_tokens=2)
        raise StopAsyncIteration

    async def aclose(self):
        self.closed = True


class FakeRuntime:
    """Fails as the model name says."""

    def __init__(self):
        self.streams = []

    async def astream(self, model, **kwargs):
        if model == "busy":
            raise Busy("the queue is full", retry_after=2.5)
        if model == "bug":
            raise RuntimeError("secret internal detail")
        stream = {
            "midway": FakeStream(["Hel", "lo"], GenerationFailed("the backend crashed")),
            "at-once": FakeStream([], InvalidRequest("the prompt is too long", param="messages")),
        }.get(model, FakeStream(["Hel", "lo"]))
        self.streams.append(stream)
        return stream


@pytest.fixture
def fake_runtime(jp_web_app):
    serving = jp_web_app.settings[SERVING_SETTING]
    real, serving.runtime = serving.runtime, FakeRuntime()
    yield serving.runtime
    serving.runtime = real


@pytest.fixture
def fetch(jp_fetch, jp_asyncio_loop):
    """jp_fetch, run to completion (tests here are plain functions), errors returned as responses."""
    # An earlier test's asyncio.run() leaves the main thread with no current loop; tornado's client
    # asks for the current one.
    asyncio.set_event_loop(jp_asyncio_loop)

    def call(*parts, **kwargs):
        kwargs.setdefault("raise_error", False)
        return jp_asyncio_loop.run_until_complete(jp_fetch(*parts, **kwargs))

    return call


def _post(fetch, path, body, **kwargs):
    return fetch("universal", "v1", path, method="POST", body=json.dumps(body), **kwargs)


def _chat(model, stream=False):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def _events(response):
    return [line[6:] for line in response.body.decode().splitlines() if line.startswith("data: ")]


def test_failure_after_streaming_began_is_an_error_event_then_done(fetch, fake_runtime):
    response = _post(fetch, "chat/completions", _chat("midway", stream=True))
    assert response.code == 200
    events = _events(response)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == "the backend crashed" and error["type"] == "server_error"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == "Hello"
    assert all(stream.closed for stream in fake_runtime.streams)


def test_a_bug_after_streaming_began_still_ends_the_stream_cleanly(fetch, fake_runtime, monkeypatch):
    from universal_kernel.server_ext.generation import ChatRenderer

    real, calls = ChatRenderer._chunk, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyError("a rendering bug")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChatRenderer, "_chunk", flaky)
    response = _post(fetch, "chat/completions", _chat("ok", stream=True))
    assert response.code == 200
    events = _events(response)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["type"] == "server_error"
    assert "rendering bug" not in response.body.decode()


def test_failure_before_the_first_token_is_an_http_error_even_when_streaming(fetch, fake_runtime):
    response = _post(fetch, "chat/completions", _chat("at-once", stream=True))
    assert response.code == 400
    assert json.loads(response.body)["error"]["param"] == "messages"
    assert response.headers["x-should-retry"] == "false"


def test_same_events_streaming_or_not(fetch, fake_runtime):
    whole = json.loads((_post(fetch, "chat/completions", _chat("ok"))).body)
    assert whole["choices"][0]["message"]["content"] == "Hello"
    assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    failed = _post(fetch, "chat/completions", _chat("midway"))
    assert failed.code == 500 and json.loads(failed.body)["error"]["code"] == "generation_failed"


def test_busy_is_429_with_retry_after(fetch, fake_runtime):
    response = _post(fetch, "completions", {"model": "busy", "prompt": "hi"})
    assert response.code == 429
    assert response.headers["Retry-After"] == "3"
    assert "x-should-retry" not in response.headers or response.headers["x-should-retry"] == "true"


def test_unexpected_exception_is_500_without_details(fetch, fake_runtime):
    response = _post(fetch, "chat/completions", _chat("bug"))
    assert response.code == 500
    body = response.body.decode()
    assert "secret" not in body and "Traceback" not in body
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_authorized_against_this_extensions_resource(fetch, fake_runtime):
    response = fetch("universal", "v1", "models", headers={"X-Test-Deny": "1"})
    assert response.code == 403
    error = json.loads(response.body)["error"]
    assert error["type"] == "permission_error" and AUTH_RESOURCE in error["message"]
    allowed = fetch("api", "status", headers={"X-Test-Deny": "1"})
    assert allowed.code == 200  # Jupyter's own resources are untouched


def test_invalid_bodies(fetch, fake_runtime):
    for body, param in [({"model": "x"}, "messages"), ({"messages": "hi"}, "messages"),
                        (_chat("ok") | {"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
                        # a tool without its function: the param names the missing field
                        (_chat("ok") | {"tools": [{"type": "function"}]}, "tools.0.function.name")]:
        response = _post(fetch, "chat/completions", body)
        assert response.code == 400, body
        assert json.loads(response.body)["error"]["param"] == param
    response = _post(fetch, "completions", {"prompt": [1, 2, 3]})
    assert response.code == 400 and json.loads(response.body)["error"]["param"] == "prompt"
    response = fetch("universal", "v1", "chat", "completions", method="POST", body="[1, 2]")
    assert response.code == 400 and json.loads(response.body)["error"]["code"] == "invalid_json"


def test_error_table():
    expected = {
        ModelNotFound("m"): (404, "model_not_found", "false"),
        ReferenceRefused("m"): (400, "model_refused", "false"),
        WrongTask("m"): (400, "wrong_model_task", "false"),
        InvalidRequest("m", param="top_p"): (400, "invalid_value", "false"),
        Busy("m"): (429, "model_busy", "true"),
        MemoryBudgetExceeded("m"): (507, "memory_budget_exceeded", "false"),
        BackendUnavailable("m"): (501, "backend_unavailable", "false"),
        LoadFailed("m"): (500, "load_failed", "false"),
        GenerationFailed("m"): (500, "generation_failed", None),
    }
    for exc, (status, code, retry) in expected.items():
        fail = failure_from(exc)
        assert (fail.status, fail.body.error.code, fail.headers.get("x-should-retry")) == (status, code, retry)
        assert fail.body.error.message == "m"
    assert failure_from(InvalidRequest("m", param="top_p")).body.error.param == "top_p"
    assert failure_from(ModelNotFound("m")).body.error.param == "model"


def test_keep_alive_durations():
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds(30) == 30
    assert keep_alive_seconds("5m") == 300
    assert keep_alive_seconds("-1") == -1
    assert keep_alive_seconds("1h") == 3600
    with pytest.raises(InvalidRequest):
        keep_alive_seconds("soon")
