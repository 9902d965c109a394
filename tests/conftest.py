"""Shared fixtures: each real model is loaded once per test session."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import pytest

# The environment is the tests' own: a user's settings never leak in (set, not setdefault).
# Never reach a hub from a test: the models come from PyPI packages.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Fitted anomaly detectors of this session (kernel runtimes and the server alike) stay out of ~/.cache;
# the folder goes at the end of the session (remove_the_anomaly_folder).
ANOMALY_FOLDER = tempfile.mkdtemp(prefix="uk-anomaly-")
os.environ["UNIVERSAL_KERNEL_ANOMALY_FOLDER"] = ANOMALY_FOLDER
# The embedding cache on disk would carry vectors from one test's runtime to the next (and from one test
# session to the next): off, except in the tests of that cache (test_embedding_store.py), which set their own.
os.environ["UNIVERSAL_KERNEL_EMBEDDING_CACHE"] = "off"
# No other runtime setting of the user's applies: the machine as the runtime reads it is the CPU's own unless
# a test sets the seam (universal_kernel/machine.py), and device, precision, slots, budget, keep_alive and a
# remote server are the defaults. Only where the tests' artifacts go is CI's to say.
for _name in [n for n in os.environ if n.startswith("UNIVERSAL_KERNEL_")]:
    if _name not in ("UNIVERSAL_KERNEL_ANOMALY_FOLDER", "UNIVERSAL_KERNEL_EMBEDDING_CACHE",
                     "UNIVERSAL_KERNEL_TEST_ARTIFACTS"):
        os.environ.pop(_name)

from universal_kernel import Runtime, RuntimeConfig  # noqa: E402
from universal_kernel.references import BUILTIN_ALIASES  # noqa: E402

SMOLLM = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
FRANCE = "Which city is the capital of France?"
#: the encoders' precision of the shared runtime and server (see `runtime`)
SHARED_PRECISION = "fp32"


@pytest.fixture(scope="session", autouse=True)
def remove_the_anomaly_folder():
    """The session's temporary folder of fitted detectors goes when the session ends."""
    import shutil

    yield
    shutil.rmtree(ANOMALY_FOLDER, ignore_errors=True)


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
    """A runtime shared by the session's tests, with both default models loaded once.

    It (and the shared `server`) asks for fp32: tests compare its numbers across doors and with the libraries'
    fp32 references, and a bf16 row's numbers depend on the batch it was computed in (within the probe's
    promise), which a shared runtime's in-memory cache mixes. bf16 is tested on its own, on both kinds of CPU
    (test_precision*.py)."""
    config = RuntimeConfig(model_folders=[tmp_path_factory.mktemp("models")], keep_alive=-1,
                           convert_cache=tmp_path_factory.mktemp("converted"), precision=SHARED_PRECISION,
                           parallel=PARALLEL)  # the server's slots (a kernel's default is 1): batching is tested here
    rt = Runtime(config)
    rt.load(SMOLLM)
    rt.load(MINILM)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def raw_llama(smollm_path, runtime):
    """llama-cpp-python itself, with the runtime's context size and threads: the reference."""
    from universal_kernel.backends.llama_cpp import llama_library

    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    entry = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM)
    llm = llama_cpp.Llama(**entry.backend.library_settings(), verbose=False)  # flash attention as ours
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def convert_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("converted-gguf")


@pytest.fixture(scope="session")
def hf_runtime(smollm_path, convert_cache, tmp_path_factory):
    """The SmolLM2 GGUF through the transformers backend, loaded once (the first load dequantises, ~35 s)."""
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path_factory.mktemp("hf-models")], keep_alive=-1,
                               convert_cache=convert_cache), reaper=False)
    rt.load(SMOLLM, backend="transformers")
    yield rt
    rt.close()


# The real `jupyter server` with the extension, shared by the HTTP tests of the session ----------------------
TOKEN = "universal-kernel-test-token"
BODY_LIMIT = 2**20
QUEUE_LENGTH = 4  # with PARALLEL, 8 concurrent streams fit: 4 run, 4 wait
#: generations the server's SmolLM2 decodes together; more wait in its queue
PARALLEL = 4


def stop_process(process) -> None:
    """SIGTERM, then SIGKILL after 30 s: a server under test never outlives its test."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(predicate, timeout: float, what):
    """The first truthy value of `predicate()` within `timeout` seconds; else fail saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, port: int, process, log):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.process = process
        self.log = log

    def get(self, path: str, token: str | None = TOKEN, **kwargs):
        import requests

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def post(self, path: str, body=None, token: str | None = TOKEN, **kwargs):
        import json

        import requests

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        return requests.post(self.url + path, data=data, headers=headers, timeout=kwargs.pop("timeout", 120),
                             **kwargs)

    def status(self) -> dict:
        response = self.get("universal/api/status")
        response.raise_for_status()
        return response.json()

    def model_status(self, model_id: str) -> dict | None:
        return next((m for m in self.status()["models"] if m["id"] == model_id), None)

    def client(self, token: str = TOKEN, **kwargs):
        import openai

        return openai.OpenAI(api_key=token, base_url=self.url + "universal/v1", max_retries=0, timeout=120,
                             **kwargs)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(folder, *options: str, env: dict | None = None, ready=lambda status: True,
                 timeout: float = 240, port: int | None = None) -> Server:
    """A `jupyter server` of a test's own, with the extension and `--UniversalKernelApp` `options`, its root,
    config and log in `folder`; returned once its status answers and `ready(status)` holds. `port`: that one
    (a server restarted on the same URL), never the next free one."""
    import sys

    import requests

    if port is not None:
        options = ("--ServerApp.port_retries=0", *options)
    port = port or _free_port()
    log = folder / "server.log"
    full_env = dict(os.environ, JUPYTER_CONFIG_DIR=str(folder / "config"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"),
                    JUPYTER_DATA_DIR=str(folder / "data"), **(env or {}))
    command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}",
               "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True", "--UniversalKernelApp.threads=1",
               *options]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=folder)
    srv = Server(port, process, log)

    def answered():
        assert process.poll() is None, f"jupyter server exited with {process.returncode}:\n{srv.log_tail()}"
        try:
            return ready(srv.status())
        except requests.RequestException:
            return False

    try:
        wait_for(answered, timeout, lambda: f"the server did not start in time:\n{srv.log_tail()}")
    except BaseException:
        stop_process(process)
        raise
    return srv


@pytest.fixture(scope="session")
def server(smollm_path, minilm_path, tmp_path_factory):
    """`jupyter server` with the extension, as a user would start it, both default models preloaded."""
    import subprocess
    import sys
    import time

    import requests

    root = tmp_path_factory.mktemp("server-root")
    home = tmp_path_factory.mktemp("server-jupyter")
    port = _free_port()
    log = home / "server.log"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               UNIVERSAL_KERNEL_CONVERT_CACHE=str(home / "converted"), UNIVERSAL_KERNEL_PRECISION=SHARED_PRECISION)
    command = [
        sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True",
        f'--UniversalKernelApp.preload=["{SMOLLM}", "{MINILM}"]',  # as the README writes it
        "--UniversalKernelApp.keep_alive=-1", f"--UniversalKernelApp.max_body_size={BODY_LIMIT}",
        f"--UniversalKernelApp.queue_length={QUEUE_LENGTH}", f"--UniversalKernelApp.parallel={PARALLEL}",
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
        stop_process(process)
