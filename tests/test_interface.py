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

import pandas as pd
import pytest

from universal_kernel import InferenceRuntime, InvalidRequest, Runtime, RuntimeConfig, WrongTask
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
        "tests.toy_task", lambda config: config.default_embedding_model, methods=("count",),
        upstream="tests.toy_task"))
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


def test_a_task_registered_later_gets_its_methods_and_settings(runtime, count_task, monkeypatch):
    assert "count" in dir(runtime) and "count" in dir(RemoteRuntime("http://127.0.0.1:1/", "token"))
    assert inspect.signature(runtime.count) == inspect.signature(lambda texts, model=None: None)
    assert runtime.count(["hello world"], MINILM) == [runtime.embed(["hello world"], MINILM).prompt_tokens]
    # its own setting: a keyword, an environment variable, and read by its work from the runtime's config
    assert RuntimeConfig(toy_count_limit=3).toy_count_limit == 3
    monkeypatch.setenv("UNIVERSAL_KERNEL_TOY_COUNT_LIMIT", "5")
    assert RuntimeConfig().toy_count_limit == 5 and runtime.config.toy_count_limit == 5  # a config made before
    monkeypatch.setattr(runtime.config, "toy_count_limit", 1, raising=False)
    with pytest.raises(InvalidRequest, match="at most 1 texts"):
        runtime.count(["one", "two"], MINILM)


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
    # %load_ext registers its magic; the row executor gives it missing rows, --column and a progress bar
    register_task_magics(ip, get_magics(ip))
    ip.user_ns["df"] = pd.DataFrame({"text": ["hello world", None, "hello world", "a"]}, index=[10, 11, 12, 13])
    captured, result = run(ip, f"n = %count df.text -m {MINILM}\n%count df.text -m {MINILM} --column tokens")
    assert result.success, result.error_in_exec
    one = runtime.count(["a"], MINILM)[0]
    assert ip.user_ns["n"].tolist()[::2] == [tokenizer_count] * 2 and ip.user_ns["n"].isna().tolist()[1]
    assert ip.user_ns["n"].index.tolist() == [10, 11, 12, 13]
    assert ip.user_ns["df"]["tokens"].tolist()[2:] == [tokenizer_count, one]
    assert "1 of 4 values are missing" in captured.stderr


def test_a_new_task_runs_on_a_dask_series_through_its_row_function(runtime, ip, count_task, monkeypatch):  # noqa: F811
    import dask
    import dask.dataframe as dd

    from universal_kernel import runtime as runtime_module

    # no cluster: the graph runs in this process, on the process-wide runtime of the magics (the session's)
    monkeypatch.setattr(runtime_module, "_default", runtime)
    register_task_magics(ip, get_magics(ip))
    texts = pd.Series(["hello world", "a", None, "hello world"], name="text")
    ip.user_ns["dds"] = dd.from_pandas(texts, npartitions=2)
    captured, result = run(ip, f"lazy = %count dds -m {MINILM}")
    assert result.success, result.error_in_exec
    assert "lazy" in captured.stdout and "2 partitions" in captured.stdout
    with dask.config.set(scheduler="sync"):
        counted = ip.user_ns["lazy"].compute()
    local = runtime.count(["hello world", "a"], MINILM)
    assert counted.iloc[[0, 1, 3]].tolist() == [local[0], local[1], local[0]] and counted.isna().tolist()[2]




def test_a_new_task_is_served_over_http(count_task, jp_fetch, jp_web_app, jp_asyncio_loop, runtime, jp_http_port,
                                        jp_base_url, jp_serverapp):
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
        bad = post({"model": MINILM, "input": [1, 2]})  # its wire schema parses the request
        assert bad.code == 400 and json.loads(bad.body)["error"]["param"] == "input"
        # the compatibility door mounts its door routes
        door = jp_asyncio_loop.run_until_complete(jp_fetch(
            "universal", "runtime", "v1", "count", method="POST", body=json.dumps({"model": MINILM, "input": "a"}),
            raise_error=False))
        assert door.code == 200 and json.loads(door.body)["counts"] == payload["counts"][1:]
        # the HTTP client runtime has its method, built and read through the same schema
        remote = RemoteRuntime(f"http://localhost:{jp_http_port}{jp_base_url}",
                               jp_serverapp.identity_provider.token)
        counts = jp_asyncio_loop.run_until_complete(jp_asyncio_loop.run_in_executor(
            None, lambda: remote.count(["hello world", "a"], MINILM)))
        assert counts == payload["counts"]
    finally:
        serving.runtime = own
