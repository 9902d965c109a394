"""A real kernel: a long %%generate interrupted mid-stream keeps its partial text; the kernel and model go on."""

from __future__ import annotations

import queue
import time

import pytest
from jupyter_client.manager import start_new_kernel

from .conftest import FRANCE, SMOLLM


@pytest.fixture(scope="module")
def kernel(smollm_path, tmp_path_factory):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path_factory.mktemp("kernel")))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Run code; return the execute_reply content and the iopub messages of that request."""
    msg_id = kc.execute(code)
    return wait_reply(kc, msg_id, timeout)


def wait_reply(kc, msg_id: str, timeout: float, on_iopub=None) -> tuple[dict, list[dict]]:
    messages, deadline = [], time.time() + timeout
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            msg = None
        if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
            messages.append(msg)
            if on_iopub is not None:
                on_iopub(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        if time.time() > deadline:
            raise TimeoutError(f"no reply in {timeout} s")
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    return reply["content"], messages


def value(kc, expr: str):
    reply, messages = execute(kc, f"print(repr({expr}))")
    assert reply["status"] == "ok", reply
    return eval("".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"))


def test_interrupt_mid_stream_keeps_partial_text_and_frees_the_model(kernel, runtime):
    km, kc = kernel
    reply, _ = execute(kc, "%load_ext universal_kernel\nfrom universal_kernel import get_runtime\n"
                           f"_ = get_runtime().load({SMOLLM!r}, keep_alive=-1)")
    assert reply["status"] == "ok", reply

    interrupted_at = {}

    def on_iopub(msg):
        # interrupt once the live display has grown a few times: the generation is mid-stream
        if msg["msg_type"] == "update_display_data" and "text" not in interrupted_at:
            text = msg["content"]["data"].get("text/plain", "")
            if len(text) > 40:
                interrupted_at["text"] = text
                km.interrupt_kernel()

    msg_id = kc.execute("%%generate --out partial --max-tokens 1500 --temperature 0.8 --seed 3\n"
                        "Write a very long story about a dragon who learns to bake bread, in ten chapters.")
    reply, messages = wait_reply(kc, msg_id, timeout=300, on_iopub=on_iopub)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"

    partial = value(kc, "partial")
    assert len(partial) >= len(interrupted_at["text"].rstrip("\u258c"))
    assert partial.startswith(interrupted_at["text"].rstrip("\u258c")[:20])
    # the output shows the partial text and a footer saying it was interrupted
    updates = [m["content"]["data"] for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert any(d.get("text/plain") == partial for d in updates)
    footer = [d["text/plain"] for d in updates if "TTFT" in d.get("text/plain", "")]
    assert footer and "interrupted; partial text in partial" in footer[-1]

    probe = ("[(m['id'], m['running'], m['queue_depth'], m['active']) for m in get_runtime().status()['models']]")
    deadline = time.time() + 120
    while (status := value(kc, probe)) != [(SMOLLM, False, 0, 0)] and time.time() < deadline:
        time.sleep(0.2)
    assert status == [(SMOLLM, False, 0, 0)]
    last = value(kc, "get_runtime().status()['recent'][-1]")
    assert last["finish_reason"] == "cancelled" and last["completion_tokens"] < 1500

    # the kernel is alive and the model free: the next cell generates
    reply, _ = execute(kc, f"%%generate --temperature 0 --max-tokens 16 --out nxt\n{FRANCE}", timeout=300)
    assert reply["status"] == "ok", reply
    # and it is the text a fresh evaluation gives: the interrupted one left nothing behind. The tiny
    # model's answer depends on the CPU (SPEC §6), so the reference is this machine's runtime.
    expected = runtime.generate(SMOLLM, messages=[{"role": "user", "content": FRANCE}],
                                params={"temperature": 0, "max_tokens": 16}).text
    assert value(kc, "nxt") == expected
