"""Every shell command of README.md runs as printed.

Each ```bash block is read the way `.ci/run` reads the test command (a fence at the start of a
line, up to the next fence), together with the `<!-- name -->` marker right above it:

- `main-command` (fresh venv, `pip install ".[all]"`, `jupyter server ...`) runs in a copy of this
  working tree, in its own process group; the test reads the server's port and token from its
  jpserver runtime file (the README's `--port 8888` stays as printed: `jupyter server` moves to the
  next free port when 8888 is taken), waits until `/universal/v1/models` lists both default models
  as loaded, runs the README's curl example and its "runtime from Python" snippet against that
  install, then stops the group with SIGTERM.
- `editable-server-command` runs the same way on this test run's own (editable) environment.
- `test-command` is what CI runs; it is never run from inside the suite: the test checks that
  `.ci/run`'s own awk line extracts exactly that block and that `.ci/run` runs what it extracted.
- the curl examples (a chat completion, the Prometheus metrics) need $TOKEN and a running server: they
  run against the main command's server, with only the port substituted when the server is not on 8888
  (tests/test_readme_examples.py runs them against the session's server too, with the README's
  Python and IPython blocks).

A bash block that no test knows fails `test_every_bash_block_is_run`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import MINILM, SMOLLM

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
TOKEN = "readme-command-test-token"
KNOWN = ("main-command", "test-command", "editable-server-command")


def bash_blocks(text: str) -> list[tuple[str | None, str]]:
    """(marker, command) of each ```bash block: the marker is a `<!-- name -->` line right above it."""
    blocks: list[tuple[str | None, str]] = []
    marker: str | None = None
    inside: list[str] | None = None
    for line in text.splitlines():
        if inside is not None:
            if line.startswith("```"):
                blocks.append((marker, "\n".join(inside)))
                inside, marker = None, None
            else:
                inside.append(line)
        elif line.startswith("```bash"):
            inside = []
        elif match := re.fullmatch(r"<!--\s*([\w-]+)\s*-->", line.strip()):
            marker = match.group(1)
        elif line.strip():
            marker = None  # a marker names only the block right below it
    assert inside is None, "README.md ends inside a ```bash block"
    return blocks


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def readme_command(name: str) -> str:
    found = [command for marker, command in bash_blocks(README.read_text()) if marker == name]
    assert len(found) == 1, f"README.md needs exactly one ```bash block under <!-- {name} -->"
    return found[0]


def curl_blocks() -> list[str]:
    return [command for marker, command in bash_blocks(README.read_text())
            if marker is None and command.lstrip().startswith("curl ")]


# What needs no server -----------------------------------------------------------------------------------
def test_every_bash_block_is_run():
    blocks = bash_blocks(README.read_text())
    assert {marker for marker, _ in blocks if marker} == set(KNOWN)
    unknown = [command for marker, command in blocks
               if marker not in KNOWN and not command.lstrip().startswith("curl ")]
    assert not unknown, f"README bash blocks that no test runs: {unknown}"
    assert curl_blocks(), "the README's curl example is gone"
    for _, command in blocks:  # every block is one command line (continued lines end in a backslash)
        lines = command.splitlines()
        assert lines and all(line.rstrip().endswith("\\") for line in lines[:-1]), command


def test_ci_runs_exactly_the_test_command_block():
    ci = CI.read_text()
    extraction = [line for line in ci.splitlines() if line.startswith("command=$(awk ")]
    assert len(extraction) == 1, "`.ci/run` should extract the test command with one awk line"
    # .ci/run's own line, run by bash on this README: what CI will run
    extracted = subprocess.run(["bash", "-c", f'set -euo pipefail; {extraction[0]}\nprintf %s "$command"'],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert extracted == readme_command("test-command")
    assert re.search(r'^bash -c "\$command"$', ci, flags=re.M), "`.ci/run` must run the command it extracted"
    # the command installs the project with its test extras and runs the whole suite
    assert 'pip install -e ".[test]"' in extracted and extracted.rstrip().endswith("pytest")


def test_the_readme_never_gives_the_jupyter_server_extension_flag_as_json():
    """jupyter_server refuses `--ServerApp.jpserver_extensions='{...}'` ("expected a dict, not the list")."""
    text = README.read_text()
    assert "jpserver_extensions='{" not in text and 'jpserver_extensions="{' not in text
    assert "--ServerApp.jpserver_extensions=universal_kernel.server_ext=True" in readme_command(
        "editable-server-command")


# Commands that start a server ---------------------------------------------------------------------------
def _clean_env(home: Path) -> dict:
    """The environment of a fresh shell: no active venv; Jupyter's folders of its own; a known token."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    for name in [n for n in env if n.startswith("UNIVERSAL_KERNEL_") or n.startswith("JPY_")]:
        env.pop(name)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_TOKEN=TOKEN,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _copy_working_tree(dest: Path) -> Path:
    """This checkout as it is now (tracked and untracked-but-not-ignored files), without .venv or builds."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # skips files deleted in the working tree, and submodules
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


class ReadmeServer:
    """A README command that ends in `jupyter server ...`, in its own process group."""

    def __init__(self, command: str, cwd: Path, home: Path):
        self.command = command
        self.env = _clean_env(home)
        self.runtime_dir = Path(self.env["JUPYTER_RUNTIME_DIR"])
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "command.log"
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.url: str | None = None
        self.token = TOKEN

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _runtime_file(self) -> dict | None:
        for path in sorted(self.runtime_dir.glob("jpserver-*.json")):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if "url" in info and "port" in info:
                return info
        return None

    def models(self) -> dict[str, dict]:
        response = requests.get(self.url + "universal/v1/models", timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return {m["id"]: m for m in response.json()["data"]}

    def wait_until_models_loaded(self, timeout: float) -> float:
        """Seconds from the command's start until both default models are listed as loaded."""
        deadline = self.started + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"the README command exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.url is None and (info := self._runtime_file()):
                self.url = f"http://127.0.0.1:{info['port']}{info.get('base_url') or '/'}"
                self.port = int(info["port"])
                self.token = info.get("token") or TOKEN
            if self.url is not None:
                try:
                    models = self.models()
                    if all(models.get(m, {}).get("loaded") for m in (SMOLLM, MINILM)):
                        return time.monotonic() - self.started
                except requests.HTTPError as exc:
                    # jupyter_server writes its runtime file after loading extensions: a 404 here means the
                    # extension did not load, which no amount of waiting mends
                    if exc.response is not None and exc.response.status_code == 404:
                        pytest.fail(f"the README command's server runs without the extension "
                                    f"(universal/v1/models: 404):\n{self.log_tail()}")
                except requests.RequestException:
                    pass
            if "extension failed loading" in self.log_path.read_text(errors="replace"):
                pytest.fail(f"the README command's server could not load the extension:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the README command did not serve both models in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(1.0)

    def stop(self) -> int | None:
        """SIGTERM to the whole group (bash and the server); SIGKILL what is left after a minute."""
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.process.poll()
            try:
                os.killpg(group, 0)  # anyone left in the group?
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.wait()


def _report(capsys, message: str) -> None:
    """A line on the terminal, past pytest's capture: how long the README's commands take."""
    with capsys.disabled():
        print(f"\n[README] {message}", flush=True)


@pytest.mark.timeout(2400)
def test_main_command_serves_both_models_and_the_curl_and_python_examples_work(tmp_path, capsys):
    command = readme_command("main-command")
    assert "jupyter server" in command and 'pip install ".[all]"' in command
    repo = _copy_working_tree(tmp_path / "repo")
    home = tmp_path / "home"
    server = ReadmeServer(command, repo, home)
    try:
        took = server.wait_until_models_loaded(timeout=2100)
        _report(capsys, f"main command: both models served {took:.0f} s after the start (fresh venv, pip installs, "
                f"server start, preload) on port {server.port}")
        assert (repo / ".venv" / "bin" / "jupyter").exists()  # the command made its venv where it ran

        # the curl example, with $TOKEN; only the port changes when the server could not take 8888
        for curl in curl_blocks():
            ran = curl.replace("127.0.0.1:8888", f"127.0.0.1:{server.port}")
            out = subprocess.run(["bash", "-c", ran], env=dict(server.env, TOKEN=server.token),
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            if "/metrics" in curl:  # the Prometheus example: the extension's metrics on Jupyter's /metrics
                assert "universal_kernel_requests_total" in out.stdout, out.stdout[-2000:]
                continue
            reply = json.loads(out.stdout)
            assert reply["object"] == "chat.completion" and reply["model"] == SMOLLM, reply
            content = reply["choices"][0]["message"]["content"]
            assert isinstance(content, str) and content.strip(), reply
            assert reply["usage"]["completion_tokens"] > 0 and reply["choices"][0]["finish_reason"] in (
                "stop", "length")

        # the "runtime from Python" snippet, with the python that the main command installed
        snippet = next(block for block in python_blocks(README.read_text()) if "get_runtime()" in block)
        elsewhere = tmp_path / "elsewhere"  # not the copy's root: import the installed package, not the sources
        elsewhere.mkdir()
        started = time.monotonic()
        out = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", snippet], cwd=elsewhere,
                             env=server.env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        _report(capsys, f"the README's runtime-from-Python snippet ran in {time.monotonic() - started:.0f} s")
        assert out.stdout.strip(), "the snippet streams a completion to stdout"
    finally:
        code = server.stop()
    assert code is not None
    assert "expected a dict" not in server.log_tail(400)
    shutil.rmtree(repo / ".venv", ignore_errors=True)  # a few GB: do not keep it in pytest's tmp folders


@pytest.mark.timeout(900)
def test_editable_server_command_serves_both_models(tmp_path, capsys):
    command = readme_command("editable-server-command")
    if sys.prefix == sys.base_prefix:
        pytest.fail("the editable-install command activates .venv: run the suite from the README's venv")
    where = tmp_path / "checkout"
    where.mkdir()
    (where / ".venv").symlink_to(sys.prefix)  # the environment of this test run (the test command's)
    server = ReadmeServer(command, where, tmp_path / "home")
    try:
        took = server.wait_until_models_loaded(timeout=600)
        _report(capsys, f"editable-install server command: both models served {took:.0f} s after the start "
                        f"on port {server.port}")
    finally:
        server.stop()
    log = server.log_tail(400)
    assert "universal_kernel.server_ext | extension was successfully loaded" in log
    assert "expected a dict" not in log and "failed loading" not in log
