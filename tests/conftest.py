"""Shared fixtures: each real model is loaded once per test session."""

from __future__ import annotations

import os
import signal

import pytest

# Never reach a hub from a test: the models come from PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from universal_kernel import Runtime, RuntimeConfig  # noqa: E402
from universal_kernel.references import BUILTIN_ALIASES  # noqa: E402

SMOLLM = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
FRANCE = "Which city is the capital of France?"


@pytest.fixture(scope="session", autouse=True)
def sigint_raises_keyboard_interrupt():
    """SIGINT raises KeyboardInterrupt, as in a kernel running a cell.

    A process started in the background by a non-interactive shell (CI) inherits SIGINT ignored,
    and Python then installs no handler: a test's interrupt would do nothing.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _require(alias: str):
    find, package = BUILTIN_ALIASES[alias]
    path = find()
    if path is None:
        # In CI a missing model package must fail, never skip.
        pytest.fail(f"model package for {alias} is not installed: pip install {package}")
    return path


@pytest.fixture(scope="session")
def smollm_path():
    return _require(SMOLLM)


@pytest.fixture(scope="session")
def minilm_path():
    return _require(MINILM)


@pytest.fixture(scope="session")
def runtime(smollm_path, minilm_path, tmp_path_factory):
    """A runtime shared by the session's tests, with both default models loaded once."""
    config = RuntimeConfig(model_folders=[tmp_path_factory.mktemp("models")], keep_alive=-1,
                           convert_cache=tmp_path_factory.mktemp("converted"))
    rt = Runtime(config)
    rt.load(SMOLLM)
    rt.load(MINILM)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def raw_llama(smollm_path, runtime):
    """llama-cpp-python itself, with the runtime's context size and threads: the reference."""
    import llama_cpp

    from universal_kernel.devices import cpu_threads

    entry = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM)
    llm = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=entry.backend.n_ctx, n_threads=cpu_threads(),
                          n_threads_batch=cpu_threads(), n_gpu_layers=0, verbose=False)
    yield llm
    llm.close()
