"""A kernel whose `%runtime use server` lost its server finds it again when it comes back on the same URL:
a real `jupyter server` is stopped, then started again on the same port, under a real IPython shell.

While it is away each magic says so in one line and nothing runs in the kernel instead; the first magic
after it is back says, once, where its work goes, and gets the same answer as before."""

from __future__ import annotations

import numpy as np

from universal_kernel.magics import get_magics

from .conftest import MINILM, TOKEN, start_server, stop_process
from .magics_support import Recorder, ip, run  # noqa: F401

TEXTS = '["a lighthouse in a storm", "a keeper and his lamp"]'


def _embed(shell, out: str):
    return run(shell, f"%embed {TEXTS} --model {MINILM} --out {out}")


def test_a_restarted_server_is_found_again_on_the_same_url(ip, runtime, tmp_path):  # noqa: F811
    magics = get_magics(ip)
    local = Recorder(runtime)
    magics.set_local_runtime(local)  # what the kernel would compute itself: must stay untouched
    srv = start_server(tmp_path)
    try:
        captured, result = run(ip, f"%runtime use server {srv.url} --token {TOKEN}")
        assert result.success, result.error_in_exec
        remote = magics.runtime_for()
        captured, result = _embed(ip, "before")
        assert result.success, result.error_in_exec
        before = ip.user_ns["before"]

        stop_process(srv.process)  # the Jupyter server stops (a restart: it comes back below)
        for attempt in range(2):  # each magic while it is away: one line, the same server named, no work here
            captured, result = _embed(ip, "away")
            error = str(result.error_in_exec)
            assert "cannot reach the Jupyter server" in error and srv.url in error and "\n" not in error, error
            if attempt:  # the magic knew it was away: it asked again, and says what the user may do
                assert "not answering since" in error and "%runtime use local" in error, error
            assert "Traceback" not in captured.stderr and "away" not in ip.user_ns
        assert magics.use_server and magics.runtime_for.__self__ is magics and local.calls == []
        assert remote.lost_at is not None

        srv = start_server(tmp_path, port=srv.port)  # the same URL again
        captured, result = _embed(ip, "after")
        assert result.success, result.error_in_exec
        lines = [line for line in captured.stdout.splitlines() if "answers again" in line]
        assert lines == [f"the Jupyter server at {srv.url} answers again (it stopped answering at "
                         f"{lines[0].split('stopped answering at ')[1][:8]}); magics send their work there"], \
            captured.stdout
        np.testing.assert_allclose(ip.user_ns["after"], before, atol=1e-5)
        assert magics.runtime_for() is remote and remote.lost_at is None and local.calls == []

        captured, result = _embed(ip, "again")  # said once: the next magic just works
        assert result.success and "answers again" not in captured.stdout
    finally:
        stop_process(srv.process)


def test_a_server_that_never_came_back_is_not_replaced_by_local_work(ip, runtime, tmp_path):  # noqa: F811
    magics = get_magics(ip)
    local = Recorder(runtime)
    magics.set_local_runtime(local)
    srv = start_server(tmp_path)
    try:
        run(ip, f"%runtime use server {srv.url} --token {TOKEN}")
    finally:
        stop_process(srv.process)
    captured, result = run(ip, "%%generate --max-tokens 4 --temperature 0\nHello")
    assert "cannot reach the Jupyter server" in str(result.error_in_exec)
    assert local.calls == [] and magics.use_server
    # only the user moves the work: then it runs here, and says so
    captured, result = run(ip, "%runtime use local")
    assert "in-process runtime" in captured.stdout
    captured, result = run(ip, "%%generate --max-tokens 4 --temperature 0 --out here\nHello")
    assert result.success, result.error_in_exec
    assert [name for name, _, _ in local.calls] == ["stream"]
