"""The notebook front end in a real browser: JupyterLab driven by Playwright on Debian's chromium.

One JupyterLab and one browser for the module. A notebook runs `%load_ext`, `%runtime monitor`,
`%%generate` and `%embed` in a fresh kernel, and the test reads the DOM as a user sees it: the
monitor's memory line, both model rows and a drawn latency plot; `%%generate`'s text growing while
it streams, then its footer; no red error in the monitor while the kernel imports torch for the
first time; no console errors from this project. Screenshots of each state are saved in
`$UNIVERSAL_KERNEL_TEST_ARTIFACTS/browser` (a temporary folder otherwise), which `.ci/run` lists.

Browsers cannot be downloaded here: Playwright drives `/usr/bin/chromium` (`apt-get install
chromium`), never a browser of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from playwright import sync_api

from .conftest import MINILM, SMOLLM, stop_process, wait_for
from .magics_support import free_port

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-token-7"
GENERATE = "%%generate --max-tokens 64 --temperature 0 --format text\nCount from one to thirty, in words."
CELLS = [
    "%load_ext universal_kernel",
    "%runtime monitor --interval 0.25",
    GENERATE,
    "import sys\nprint('torch imported:', 'torch' in sys.modules)",
    'vectors = %embed ["a first sentence", "a second one"]\nvectors.shape',
]



def artifacts() -> Path:
    root = os.environ.get("UNIVERSAL_KERNEL_TEST_ARTIFACTS") or tempfile.mkdtemp(prefix="uk-artifacts-")
    folder = Path(root) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook(cells: list[str]) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "execution_count": None,
                       "outputs": [], "source": source} for i, source in enumerate(cells)]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    root = tmp_path_factory.mktemp("lab-root")
    home = tmp_path_factory.mktemp("lab-home")
    (root / "browser.ipynb").write_text(json.dumps(notebook(CELLS)))
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", UNIVERSAL_KERNEL_KEEP_ALIVE="-1")
    log = home / "lab.log"
    command = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               # window.jupyterapp: cells run through JupyterLab's own commands, not timing-dependent keys
               "--LabApp.expose_app_in_browser=True"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    try:
        import requests

        def up():
            try:
                return requests.get(url + "api/status", params={"token": TOKEN}, timeout=5).ok
            except requests.RequestException:
                return False

        wait_for(up, 120, "JupyterLab to start")
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def page(lab):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.console_errors = []
        tab.on("console", lambda message: tab.console_errors.append(message.text)
               if message.type == "error" else None)
        tab.on("pageerror", lambda error: tab.console_errors.append(f"pageerror: {error}"))
        tab.goto(f"{lab}lab/tree/browser.ipynb?token={TOKEN}")
        tab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        # the kernel is up once the toolbar's status says idle
        tab.wait_for_function(
            "() => document.querySelector('.jp-Notebook') && "
            "[...document.querySelectorAll('[data-status]')].some(e => e.dataset.status === 'idle')",
            timeout=120_000)
        yield tab
        context.close()
        browser.close()


def run_cell(page, index: int) -> None:
    """Select the cell and run it with JupyterLab's `notebook:run-cell` command, as its run button does."""
    page.evaluate("""async (index) => {
        const app = window.jupyterapp;
        const panel = app.shell.currentWidget;
        await panel.sessionContext.ready;
        panel.content.activeCellIndex = index;
        await app.commands.execute('notebook:run-cell');
    }""", index)


def cell_prompt(page, index: int) -> str:
    return page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt").inner_text()


def finished(page, index: int) -> bool:
    """The cell's prompt shows an execution count (`[3]:`), not `[*]:` or an empty `[ ]:`."""
    return any(ch.isdigit() for ch in cell_prompt(page, index))


def wait_done(page, index: int, timeout: float = 180) -> None:
    def done():
        return finished(page, index)

    try:
        wait_for(done, timeout, f"cell {index} to finish")
    except AssertionError:
        page.screenshot(path=str(artifacts() / f"failed-cell-{index}.png"), full_page=True)
        raise AssertionError(f"cell {index} did not finish; its prompt: {cell_prompt(page, index)!r}; "
                             f"output: {output_text(page, index)[:300]!r}") from None


def output_text(page, index: int) -> str:
    outputs = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea")
    return outputs.inner_text() if outputs.count() else ""


def monitor(page):
    return page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea")


def test_the_notebook_in_a_browser(page):
    shots = artifacts()
    run_cell(page, 0)
    wait_done(page, 0, 60)
    run_cell(page, 1)
    wait_for(lambda: "universal-kernel" in monitor(page).inner_text(), 60, "the monitor widget to render")
    page.screenshot(path=str(shots / "1-monitor.png"), full_page=True)
    assert "process RSS" in monitor(page).inner_text()  # the memory line

    # %%generate: the output grows while it streams (every change of the output is recorded in the page
    # by a MutationObserver: a fast stream can finish between two polls), then ends with the footer
    page.evaluate("""(index) => {
        const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[index];
        window.ukSnapshots = [];
        const record = () => {
            const area = cell.querySelector('.jp-OutputArea');
            const text = area ? area.innerText : '';
            const last = window.ukSnapshots[window.ukSnapshots.length - 1];
            if (text && text !== last) window.ukSnapshots.push(text);
        };
        new MutationObserver(record).observe(cell, {subtree: true, childList: true, characterData: true});
    }""", 2)
    run_cell(page, 2)
    wait_done(page, 2)
    wait_for(lambda: "tokens/s" in output_text(page, 2), 30, "the footer")
    page.screenshot(path=str(shots / "2-generate-done.png"), full_page=True)
    final = output_text(page, 2).strip().splitlines()
    assert "tokens/s" in final[-1] and SMOLLM in final[-1]
    snapshots = page.evaluate("window.ukSnapshots")
    streaming = [text for text in snapshots if "tokens/s" not in text]
    assert len(streaming) >= 2, snapshots
    assert len(streaming[-1]) > len(streaming[0]), streaming

    # %embed in a kernel that has not imported torch yet: the monitor must never turn red meanwhile
    # (every change of the monitor's DOM is checked in the page, not only what a poll happens to see)
    page.evaluate("""(index) => {
        const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[index];
        window.ukRed = [];
        new MutationObserver(() => {
            for (const span of cell.querySelectorAll("span[style*='color:#c00']")) window.ukRed.push(span.innerText);
        }).observe(cell, {subtree: true, childList: true, characterData: true});
    }""", 1)
    run_cell(page, 3)
    wait_done(page, 3)
    assert "torch imported: False" in output_text(page, 3)  # the next cell is the kernel's first torch import
    run_cell(page, 4)
    wait_done(page, 4)
    assert page.evaluate("window.ukRed") == []
    assert "(2, 384)" in output_text(page, 4)

    # the monitor, after its next refresh: both models, and a latency plot with points
    def both_models():
        text = monitor(page).inner_text()
        return SMOLLM in text and MINILM in text

    wait_for(both_models, 30, "both models in the monitor")
    shown = monitor(page).inner_text()
    assert "precision: " in shown and f"{MINILM}: " in shown.split("precision: ", 1)[1], shown  # which, and why
    page.screenshot(path=str(shots / "4-monitor-after.png"), full_page=True)
    plot = monitor(page).locator("svg", has_text="max")
    wait_for(lambda: plot.locator("circle").count() >= 2, 30,
             lambda: f"the latency plot's points; the monitor shows: {monitor(page).inner_text()[-600:]!r}")
    assert "max" in plot.text_content() and " s" in plot.text_content()  # the label has its unit

    ours = [e for e in page.console_errors if "universal" in e.lower() or "monitor" in e.lower()
            or "widget" in e.lower()]
    assert not ours, ours
