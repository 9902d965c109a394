"""The streaming generation display of `%%generate`, and its one-line footer.

Tokens go into an updating display (a Jupyter display handle: it works in JupyterLab, Notebook,
VS Code, nbconvert and nbval without a widget frontend). When the text is done it is rendered once
per format (markdown, text, code, json). In a terminal IPython the pieces are printed as they come.
"""

from __future__ import annotations

import html
import json
import re
import sys
import time

from universal_kernel.formatting import duration, mib

CURSOR = "\u258c"
_FENCE = re.compile(r"```([\w+.-]*)[^\n]*\n(.*?)(?:\n?```|$)", re.S)


def rich_frontend(shell=None) -> bool:
    """True where display updates render (a kernel, or a capturing publisher); False in a terminal."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        return False
    from IPython.core.displaypub import DisplayPublisher

    return type(shell.display_pub) is not DisplayPublisher


def strip_fence(text: str) -> tuple[str, str]:
    """(language, body) of the first ``` block of a text (closed or cut short); ("", text) without one."""
    match = _FENCE.search(text)
    return (match.group(1), match.group(2)) if match else ("", text)


def parse_json(text: str):
    """The JSON value of a model's text (a ``` fence around it is allowed); raises ValueError."""
    return json.loads(strip_fence(text)[1])


def render_bundle(text: str, fmt: str) -> dict:
    """The final mimebundle of a generated text for `--format`."""
    if fmt == "text":
        return {"text/plain": text}
    if fmt == "code":
        lang, body = strip_fence(text)
        return {"text/markdown": f"```{lang}\n{body}\n```", "text/plain": body}
    if fmt == "json":
        try:
            value = parse_json(text)
        except ValueError:
            return {"text/plain": text}
        bundle = {"text/plain": json.dumps(value, indent=2, ensure_ascii=False)}
        if isinstance(value, (dict, list)):
            bundle["application/json"] = value
        return bundle
    return {"text/markdown": text, "text/plain": text}


def footer_text(model: str, stats, *, tokens: int | None = None, memory_bytes: int | None = None,
                note: str | None = None, backend: str | None = None) -> str:
    """One line: model, time to first token, tokens/s, tokens, memory."""
    tokens = stats.completion_tokens if tokens is None else tokens
    parts = [f"{model} ({backend or stats.backend})", f"TTFT {duration(stats.ttft_s)}"]
    parts.append(f"{stats.tokens_per_s:.1f} tokens/s" if stats.tokens_per_s else "- tokens/s")
    parts.append(f"{tokens} tokens")
    if stats.load_s:
        parts.append(f"load {duration(stats.load_s)}")
    if memory_bytes:
        parts.append(f"RSS {mib(memory_bytes)}")
    if note:
        parts.append(note)
    return " \u00b7 ".join(parts)


def footer_bundle(line: str) -> dict:
    return {"text/plain": line,
            "text/html": f'<div style="font-size:85%;color:#888;font-family:monospace">{html.escape(line)}</div>'}


class StreamDisplay:
    """Live text while tokens come, the formatted text at the end, then the footer."""

    def __init__(self, fmt: str = "markdown", *, live: bool = True, min_interval: float = 0.05, shell=None):
        self.fmt = fmt
        self.rich = rich_frontend(shell)
        self.live = live
        self.min_interval = min_interval
        self.text = ""
        self.handle = None
        self.updates = 0
        self._last = 0.0
        self._printed = False

    def start(self, note: str = "") -> None:
        if self.live and self.rich:
            from IPython.display import display

            self.handle = display({"text/plain": note + CURSOR}, raw=True, display_id=True)

    def append(self, piece: str) -> None:
        self.text += piece
        if not self.live:
            return
        if not self.rich:
            sys.stdout.write(piece)
            sys.stdout.flush()
            self._printed = True
            return
        now = time.perf_counter()
        if now - self._last >= self.min_interval:
            self._last = now
            self.updates += 1
            self.handle.update({"text/plain": self.text + CURSOR}, raw=True)

    def finish(self, footer: str, *, text: str | None = None, fmt: str | None = None) -> None:
        """Render the final text per format (or as plain text when cut short) and show the footer."""
        from IPython.display import display

        text = self.text if text is None else text
        bundle = render_bundle(text, fmt or self.fmt)
        if not self.rich:
            if self._printed:
                print()
            else:
                print(bundle["text/plain"])
            print(footer)
            return
        if self.handle is not None:
            self.handle.update(bundle, raw=True)
        else:
            display(bundle, raw=True)
        display(footer_bundle(footer), raw=True)
