"""One runtime interface, and tasks as modules behind one registry.

- The local runtime and the HTTP client runtime both implement `InferenceRuntime`; a third one plugs
  into the magics without an edit to them, and the magics say where its work ran (`where`).
- A new task is its modules plus one line in `TASKS`: the runtime runs it, `tasks_of` lists it, the
  server mounts its route, `%load_ext` registers its magic (tests/toy_task.py, in a real in-process
  Jupyter server and a real shell).
"""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest

from universal_kernel import InferenceRuntime, InvalidRequest, Runtime, WrongTask
from universal_kernel.client import NoRuntimeApi, RemoteRuntime
from universal_kernel.magics import get_magics, register_task_magics
from universal_kernel.server_ext import routes as server_routes
from universal_kernel.server_ext.handlers import SERVING_SETTING
from universal_kernel.tasks import TASKS, TaskParts, tasks_of

from . import toy_task
from .conftest import MINILM, SMOLLM
from .magics_support import ip, run  # noqa: F401

# pytest_jupyter's fixtures for this module only (see tests/test_server_handlers.py)
from pytest_jupyter.jupyter_server import *  # noqa: E402,F403


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"universal_kernel.server_ext": True}}}


@pytest.fixture
def count_task(monkeypatch):
    """The one registry line of the toy task."""
    monkeypatch.setitem(TASKS, "count", TaskParts(
        "count", "count tokens", frozenset({("*", "embed")}), "tests.toy_task", "tests.toy_task",
        "tests.toy_task", lambda config: config.default_embedding_model))
    return toy_task


class ElsewhereRuntime:
    """A third implementation: the session runtime's work, said to run on a cluster."""

    where = "dask"

    def __init__(self, inner: Runtime):
        self.inner = inner
        self.default_generation_model = inner.default_generation_model
        self.default_embedding_model = inner.default_embedding_model

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, *args, **kwargs):
        return self.inner.stream(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.inner.generate(*args, **kwargs)

    def embed(self, *args, **kwargs):
        return self.inner.embed(*args, **kwargs)

    def rerank(self, *args, **kwargs):
        return self.inner.rerank(*args, **kwargs)

    def classify(self, *args, **kwargs):
        return self.inner.classify(*args, **kwargs)

    def ner(self, *args, **kwargs):
        return self.inner.ner(*args, **kwargs)

    def status(self):
        return self.inner.status()

    def models(self):
        return self.inner.models()

    def load(self, *args, **kwargs):
        return self.inner.load(*args, **kwargs)

    def unload(self, *args, **kwargs):
        return self.inner.unload(*args, **kwargs)

    def alias(self, *args, **kwargs):
        return self.inner.alias(*args, **kwargs)

    def subscribe(self, listener):
        pass


def test_both_runtimes_implement_the_interface_and_say_where_they_run(runtime):
    remote = RemoteRuntime("http://127.0.0.1:1/", "token")
    for rt, where in ((runtime, "local"), (remote, "server"), (ElsewhereRuntime(runtime), "dask")):
        assert isinstance(rt, InferenceRuntime), type(rt)
        assert rt.where == where
    assert not isinstance(object(), InferenceRuntime)


def test_the_task_methods_come_from_the_registry_alike_on_every_runtime(runtime):
    remote = RemoteRuntime("http://127.0.0.1:1/", "token")
    names = [name for parts in TASKS.values() for name in parts.methods]
    assert {"rerank", "classify", "ner", "ocr", "document", "anomaly_fit", "anomaly_score", "anomaly_models",
            "anomaly_delete"} <= set(names)
    for name in names:
        assert name not in vars(Runtime), name  # written once, in the task
        local, far = getattr(runtime, name), getattr(remote, name)
        assert inspect.signature(local) == inspect.signature(far), name
        assert name in dir(runtime) and name in dir(remote)  # tab completion lists them
        if name not in vars(RemoteRuntime):  # the embeddings' own path also serves OpenAI servers
            assert local.__doc__ and local.__doc__ == far.__doc__, name
    assert list(inspect.signature(runtime.rerank).parameters)[:4] == ["query", "documents", "model", "top_n"]
    assert type(runtime.rerank("a query", ["a match", "other"], MINILM)).__name__ == "RerankResult"


def test_capabilities_say_what_a_runtime_honours(runtime):
    remote = RemoteRuntime("http://127.0.0.1:1/", "token")  # nothing listens: every refusal comes first
    assert runtime.capabilities.embed_cache and runtime.capabilities.embed_precision
    assert not remote.capabilities.embed_cache and not remote.capabilities.embed_precision
    with pytest.raises(InvalidRequest, match="keeps its own embedding cache"):
        remote.embed(["x"], cache=False)
    foreign = RemoteRuntime("http://127.0.0.1:1/v1/", runtime_api=False, default_embedding_model="m")
    assert not foreign.capabilities.pull and remote.capabilities.pull
    with pytest.raises(NoRuntimeApi, match="%ocr"):  # refused before the file is looked for
        foreign.ocr("no-such-file.png")
    # unload answers the HTTP shape in every runtime
    assert runtime.unload(MINILM, backend="llama_cpp") == {"model": MINILM, "results": []}


def test_a_task_registered_later_gets_its_methods(runtime, count_task, monkeypatch):
    def count(rt, texts, model=None):
        """Each text's token count."""
        return rt.run(count_task.call(texts, model))["counts"]

    monkeypatch.setattr(count_task, "count", count, raising=False)
    monkeypatch.setitem(TASKS, "count", TaskParts(**{**vars(TASKS["count"]), "methods": ("count",)}))
    assert "count" in dir(runtime) and inspect.signature(runtime.count) == inspect.signature(
        lambda texts, model=None: None)
    assert runtime.count(["hello world"], MINILM) == [runtime.embed(["hello world"], MINILM).prompt_tokens]


def test_a_third_runtime_plugs_into_the_magics_unchanged(ip, runtime):  # noqa: F811
    magics = get_magics(ip)
    magics.set_local_runtime(ElsewhereRuntime(runtime))
    try:
        captured, result = run(ip, "v = %embed ['one', 'two']\nc = %classify ['a match'] --labels sports,cooking")
        assert result.success, result.error_in_exec
        assert ip.user_ns["v"].shape == (2, 384)
        assert list(ip.user_ns["c"].columns) == ["label", "score"]
        # both summaries name where the work ran, from the runtime's `where`, never its class
        assert captured.stdout.count("dask") == 2, captured.stdout
    finally:
        magics.set_local_runtime(runtime)


def test_a_new_task_is_its_modules_and_one_registry_line(runtime, ip, count_task):  # noqa: F811
    tokenizer_count = runtime.embed(["hello world"], MINILM).prompt_tokens
    # the runtime runs it, on the models the line names, and checks the task before loading
    assert runtime.run(count_task.call(["hello world"], MINILM))["counts"] == [tokenizer_count]
    assert "count" in tasks_of(runtime.resolve(MINILM))
    assert "count" not in tasks_of(runtime.resolve(SMOLLM))
    with pytest.raises(WrongTask, match="cannot count tokens"):
        runtime.run(count_task.call(["x"], SMOLLM))
    # the server mounts its route before the catch-all
    routes = [pattern for pattern, _ in server_routes.routes()]
    assert routes.index(r"universal/v1/count/?") < routes.index(r"universal/(.*)")
    # %load_ext registers its magic
    register_task_magics(ip, get_magics(ip))
    captured, result = run(ip, "n = %count ['hello world']")
    assert result.success, result.error_in_exec
    assert ip.user_ns["n"] == [tokenizer_count]


def test_a_new_task_is_served_over_http(count_task, jp_fetch, jp_web_app, jp_asyncio_loop, runtime):
    serving = jp_web_app.settings[SERVING_SETTING]
    own, serving.runtime = serving.runtime, runtime  # the session's loaded models
    asyncio.set_event_loop(jp_asyncio_loop)
    try:
        def post(body):
            return jp_asyncio_loop.run_until_complete(jp_fetch(
                "universal", "v1", "count", method="POST", body=json.dumps(body), raise_error=False))

        response = post({"model": MINILM, "input": ["hello world", "a"]})
        assert response.code == 200
        payload = json.loads(response.body)
        assert payload["model"] == MINILM and len(payload["counts"]) == 2
        wrong = post({"model": SMOLLM, "input": "x"})
        assert wrong.code == 400 and json.loads(wrong.body)["error"]["code"] == "wrong_model_task"
    finally:
        serving.runtime = own
