"""Every Python and IPython example of README.md runs as printed, in README order, in one real kernel.

How the README is read (a fence at the start of a line, up to the next fence, as test_readme_commands.py):

- ```python and ```ipython blocks are the cells of one notebook, run by nbclient in one kernel whose folder
  is a fresh one (the notebook's folder: the README's own setup blocks write their files there). A block
  of line magics only is split into one cell per line, so that a failing line is named alone.
- ```bash blocks are shell commands; the curl examples among them also run here, against the session's
  server with $TOKEN set (test_readme_commands.py runs the others).
- ```text blocks are output samples and never run. A fence without a language fails: each block says
  what it is.
- Placeholders: a line whose comment starts `# placeholder:` and a block right under a
  `<!-- not-run: REASON -->` line stand for what a reader has and this machine does not (a cluster, a
  data set, a bigger GGUF). They are left out, and each must name something unavailable here: a URL
  whose host does not resolve, or a path that does not exist in the notebook's folder. Conversely, no
  line that runs may name a host that does not resolve: a placeholder without its marker fails.
- Substitutions, the only changes to what the README prints: `http://127.0.0.1:8888` becomes the
  session server's address and `<jupyter token>` its token; the example servers of `%runtime use server`
  become the same server, `http://gpu-box:8000/v1` (key `MY_API_KEY`) as its OpenAI base URL and
  `http://gpu-box:8888/` (`JUPYTER_TOKEN`) as a Jupyter server.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import SMOLLM, TOKEN

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
KERNEL_LANGUAGES = ("python", "ipython")
LANGUAGES = (*KERNEL_LANGUAGES, "bash", "text")
PLACEHOLDER = re.compile(r"#\s*placeholder:")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'`)<>]+")
PATH = re.compile(r"[\w.-]+/[\w./*-]*")


@dataclass
class Block:
    language: str
    lines: list[str]
    first_line: int  # of the README, 1-based, of the block's first line of code
    not_run: str | None  # the reason of a `<!-- not-run: ... -->` right above it


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    marker: str | None = None
    inside: Block | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if inside is not None:
            if line.startswith("```"):
                blocks.append(inside)
                inside, marker = None, None
            else:
                inside.lines.append(line)
        elif line.startswith("```"):
            inside = Block(line[3:].strip(), [], number + 1, marker)
        elif match := NOT_RUN.fullmatch(line.strip()):
            marker = match.group(1)
        elif line.strip():
            marker = None  # a marker names only the block right below it
    assert inside is None, "README.md ends inside a fenced block"
    return blocks


def code_of(line: str) -> str:
    """The line without its comment (good enough for the README's lines: no `#` inside their strings)."""
    return line.split("#", 1)[0]


def substituted(source: str, server) -> str:
    base = server.url.rstrip("/")
    for example, real in (("http://127.0.0.1:8888", base), ("<jupyter token>", TOKEN),
                          ("http://gpu-box:8000/v1", f"{base}/universal/v1"), ("MY_API_KEY", TOKEN),
                          ("http://gpu-box:8888/", server.url), ("JUPYTER_TOKEN", TOKEN)):
        source = source.replace(example, real)
    return source


def is_line_magic(line: str) -> bool:
    return bool(re.match(r"(\w+\s*=\s*)?%(?!%)", line))


@dataclass
class Cell:
    source: str
    readme_line: int


def kernel_cells(blocks: list[Block], server) -> tuple[list[Cell], list[tuple[int, str]]]:
    """(the cells to run, in README order; the (README line, code) left out as placeholders)."""
    cells: list[Cell] = []
    left_out: list[tuple[int, str]] = []
    for block in blocks:
        if block.language not in KERNEL_LANGUAGES:
            continue
        numbered = list(enumerate(block.lines, start=block.first_line))
        if block.not_run is not None:
            left_out += [(n, line) for n, line in numbered if line.strip()]
            continue
        kept = []
        for n, line in numbered:
            (left_out if PLACEHOLDER.search(line) else kept).append((n, line))
        if all(is_line_magic(line) for _, line in kept if line.strip()):
            cells += [Cell(substituted(line, server), n) for n, line in kept if line.strip()]
        else:
            cells.append(Cell(substituted("\n".join(line for _, line in kept), server), block.first_line))
    return cells, left_out


def unresolvable_urls(text: str) -> list[str]:
    found = []
    for url in URL.findall(text):
        try:
            socket.getaddrinfo(urlsplit(url).hostname, None)
        except (socket.gaierror, UnicodeError):
            found.append(url)
    return found


def unavailable(code: str, folder: Path) -> list[str]:
    """What `code` names that this machine does not have: URLs that do not resolve, paths not in `folder`."""
    missing = unresolvable_urls(code)
    for path in PATH.findall(URL.sub(" ", code)):
        if not (folder / path).exists():
            missing.append(path)
    return missing


# What needs no kernel ---------------------------------------------------------------------------------------
def test_every_block_says_what_it_is():
    blocks = readme_blocks(README.read_text())
    unknown = [(b.first_line - 1, b.language or "(none)") for b in blocks if b.language not in LANGUAGES]
    assert not unknown, f"README fences need one of {LANGUAGES} (line, language): {unknown}"
    assert any(b.language in KERNEL_LANGUAGES for b in blocks)
    for block in blocks:
        if block.not_run is not None:
            assert block.language in KERNEL_LANGUAGES, f"line {block.first_line}: only kernel blocks are not-run"


def test_only_magic_lines_and_python_in_kernel_blocks():
    """A block of ipython is a cell: a cell magic opens it, or its lines are line magics or Python."""
    for block in readme_blocks(README.read_text()):
        if block.language == "ipython":
            first = next(line for line in block.lines if line.strip())
            assert first.startswith("%%") or any(is_line_magic(line) for line in block.lines), block


# The notebook of the README ---------------------------------------------------------------------------------
def curl_examples() -> list[str]:
    return ["\n".join(b.lines) for b in readme_blocks(README.read_text())
            if b.language == "bash" and b.lines and b.lines[0].startswith("curl ")]


def test_curl_examples_run_against_the_server(server):
    curls = curl_examples()
    assert any("/metrics" in c for c in curls) and any("chat/completions" in c for c in curls)
    for curl in curls:
        done = subprocess.run(["bash", "-c", substituted(curl, server)], capture_output=True,
                              text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "TOKEN": TOKEN})
        assert done.returncode == 0, (curl, done.stderr)
        if "/metrics" in curl:
            assert "universal_kernel_requests_total" in done.stdout, done.stdout[-2000:]
        else:
            reply = json.loads(done.stdout)
            assert reply["object"] == "chat.completion" and reply["model"] == SMOLLM, reply
            assert reply["choices"][0]["message"]["content"].strip(), reply


# Checks after the README's cells, on the names they defined: what each example promises in its comments
CHECKS = """
assert reply.choices[0].message.content.strip()
assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str), call
assert out.text.strip() and [h.document for h in hits] == ["It is in Paris."], hits
assert len(rows) == 1 and rows[0].label in ("movies", "finance"), rows
assert {e.text for e in ents[0]} & {"Tim Cook", "Apple", "Cupertino"}, ents
assert [p.index for p in pages] == [0, 1] and all("1042" in p.text for p in pages), pages
assert "1042" in text and list(boxes.columns)[:2] == ["row", "page"], (text, boxes)
assert list(new_df.columns) == ["amount", "duration", "score", "score_is_anomaly"], new_df.columns
assert {"topic", "topic_score"} <= set(ddf.columns), ddf.columns
computed = vectors.compute()
assert len(computed) == len(df) and len(computed.iloc[0]) == 384
"""


def errors_of(notebook, replies: dict[int, dict]) -> list[str]:
    """The cells whose execute reply is an error: a magic's `UsageError` shows as stderr text, not as an
    error output, so the kernel's reply is what says that a cell failed."""
    found = []
    for index, cell in enumerate(notebook.cells):
        reply = replies.get(index)
        if reply is None or reply["status"] != "ok":
            where = cell.metadata.get("readme_line", "checks")
            reason = f"{reply['ename']}: {reply['evalue'][:400]}" if reply else "never ran"
            found.append(f"README line {where}: {cell.source.splitlines()[0][:100]!r}\n  {reason}")
    return found


@pytest.mark.timeout(1800)
def test_every_kernel_example_runs_as_printed(server, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path / "notebook"
    folder.mkdir()
    cells, left_out = kernel_cells(readme_blocks(README.read_text()), server)
    assert left_out, "the README's placeholders are gone: keep this test's marker check honest"
    for number, line in left_out:  # each placeholder line names something this machine does not have
        if PLACEHOLDER.search(line):
            assert unavailable(code_of(line), folder), f"README line {number} is marked but runs here: {line}"
    for block in readme_blocks(README.read_text()):
        if block.not_run is not None:
            assert unavailable("\n".join(map(code_of, block.lines)), folder), (
                f"README line {block.first_line}: not-run ({block.not_run}) but names nothing missing here")
    for cell in cells:  # a host that does not resolve, unmarked, would fail in the kernel: mark it
        assert not unresolvable_urls(cell.source), f"README line {cell.readme_line}: mark it `# placeholder:`"

    notebook = nbformat.v4.new_notebook(cells=[
        *(nbformat.v4.new_code_cell(c.source, metadata={"readme_line": c.readme_line}) for c in cells),
        nbformat.v4.new_code_cell(CHECKS)])
    replies: dict[int, dict] = {}

    def keep_reply(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply["content"]

    NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True, on_cell_executed=keep_reply,
                   resources={"metadata": {"path": str(folder)}}).execute()
    nbformat.write(notebook, folder / "readme.ipynb")  # what ran, with its outputs, for a failure's reader
    errors = errors_of(notebook, replies)
    assert not errors, "README examples that fail:\n" + "\n".join(errors)
