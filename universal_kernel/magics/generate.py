"""`%%generate`: the cell body is the prompt; tokens stream into the output; a footer sums it up."""

from __future__ import annotations

import random
import re
import sys
from dataclasses import replace

from IPython.core.error import UsageError

from ..backends import GenerationParams
from ..errors import InvalidRequest, RuntimeFailure
from .common import check_name, one_line
from .interpolate import interpolate

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}


def unescape(text: str) -> str:
    r"""`\n`, `\t`, `\r`, `\\` in a stop string typed on the magic's line."""
    return re.sub(r"\\([ntr0\\])", lambda m: _ESCAPES[m.group(1)], text)


class Conversation:
    """A `--chat NAME` conversation: the messages so far, kept in the user namespace as NAME."""

    def __init__(self, system: str | None = None):
        self.messages: list[dict] = []
        if system:
            self.messages.append({"role": "system", "content": system})

    def set_system(self, system: str) -> None:
        if self.messages and self.messages[0]["role"] == "system":
            self.messages[0]["content"] = system
        else:
            self.messages.insert(0, {"role": "system", "content": system})

    def reset(self) -> None:
        system = [m for m in self.messages[:1] if m["role"] == "system"]
        self.messages[:] = system

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        lines = [f"Conversation({self.turns} turns)"]
        for message in self.messages:
            text = message["content"].replace("\n", " ")
            lines.append(f"  {message['role']}: {text[:70] + '...' if len(text) > 70 else text}")
        return "\n".join(lines)


def _params(args, fmt: str) -> GenerationParams:
    values = {}
    if args.max_tokens is not None:
        values["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        values["temperature"] = args.temperature
    if args.top_p is not None:
        values["top_p"] = args.top_p
    if args.seed is not None:
        values["seed"] = args.seed
    if args.stop:
        values["stop"] = [unescape(s) for s in args.stop]
    if fmt == "json":
        values["response_format"] = {"type": "json_object"}
    if args.logprobs is not None:
        values["logprobs"] = args.logprobs
    try:
        return GenerationParams(**values)
    except InvalidRequest as exc:
        option = "--logprobs" if exc.param == "top_logprobs" else "--" + (exc.param or "").replace("_", "-")
        raise UsageError(f"{option}: {exc.message}" if exc.param else exc.message) from None


def _conversation(ns: dict, name: str, system: str | None) -> Conversation:
    chat = ns.get(name)
    if chat is None:
        chat = ns[name] = Conversation(system)
    elif not isinstance(chat, Conversation):
        raise UsageError(f"--chat {name}: {name} already holds a {type(chat).__name__}, not a conversation")
    elif system:
        chat.set_system(system)
    return chat


def _memory(runtime) -> int | None:
    try:
        if runtime.where != "local":
            return runtime.status()["memory"]["process_rss_bytes"]
        from ..devices import process_rss

        return process_rss()
    except Exception:
        return None


def run_generate(runtime, shell, args, cell: str, *, model: str | None, default_format: str = "markdown",
                 record=lambda generation: None):
    """Generate from `cell` on `runtime`, streaming into `shell`'s output. `record` receives the Completion
    (or the partial stream of an interrupted or failed generation)."""
    ns = shell.user_ns
    check_name("--out", args.out)
    check_name("--chat", args.chat)
    prompt = cell.strip("\n")
    if not prompt.strip():
        raise UsageError("%%generate needs a prompt: write it in the cell below the magic's line")
    system = args.system
    left: list[str] = []  # the {name}s with no such name here: sent as written
    if not args.no_interpolate:
        prompt = interpolate(prompt, ns, left)
        system = interpolate(system, ns, left) if system else system
    fmt = args.format or default_format
    params = _params(args, fmt)
    if args.n is not None and not 1 <= args.n <= 16:
        raise UsageError("--n takes 1 to 16 answers")
    # answer j of --n samples with seed + j (as the server's `n`): a given --seed repeats all of them
    seeds = params.seed if params.seed is not None else random.randrange(2**31)

    if (args.n or 1) > 1 and args.chat:  # refused before the conversation is made or touched
        raise UsageError("--n gives several answers; --chat keeps one answer per turn: use one of them")
    if left:  # the model would answer about a literal "{country}" without a word here
        print(f"warning: {', '.join(left)} left as written: not defined in the namespace "
              f"(--no-interpolate sends every {{name}} as written, without this line)", file=sys.stderr)
    chat = _conversation(ns, args.chat, system) if args.chat else None
    if chat is not None:
        messages = chat.messages + [{"role": "user", "content": prompt}]
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    answers = args.n or 1
    values = []
    for j in range(answers):
        if answers > 1:
            print(f"answer {j + 1} of {answers}")
            params = replace(params, seed=seeds + j)
        values.append(_one_answer(runtime, shell, args, model, messages, params, fmt, record, chat, prompt))
    if args.out:
        ns[args.out] = values[0] if answers == 1 else values
    return None


def _one_answer(runtime, shell, args, model, messages, params, fmt, record, chat, prompt):
    """Stream one answer into the output and finish it with its footer (and its logprobs table); its value."""
    from universal_kernel.widgets.stream_display import StreamDisplay, footer_text, parse_json

    display = StreamDisplay(fmt, live=not args.no_stream, shell=shell)
    stream = runtime.stream(model, messages=messages, params=params)
    model_id = getattr(stream, "model", model)
    display.start()
    try:
        for piece in stream:
            display.append(piece)
    except KeyboardInterrupt:
        _interrupted(shell, record, args, stream, display, chat, prompt, model_id, runtime)
        raise
    except RuntimeFailure as exc:  # failed mid-stream (the server died, the connection dropped, the backend
        # failed): keep and show what came, count it in the footer, then say so in one line
        _failed(shell, record, args, stream, display, model_id, runtime, exc)

    completion = stream.completion
    record(completion)
    text = completion.text
    value = text
    note = None
    if completion.finish_reason == "length":
        note = "stopped at --max-tokens"
    if fmt == "json":
        try:
            value = parse_json(text)
        except ValueError:
            note = "not valid JSON" + (" (cut at --max-tokens)" if completion.finish_reason == "length" else "")
    if chat is not None:
        chat.messages.append({"role": "user", "content": prompt})
        chat.messages.append({"role": "assistant", "content": text})
    footer = footer_text(model_id, completion.stats, tokens=completion.completion_tokens,
                         memory_bytes=_memory(runtime), note=note)
    display.finish(footer)
    if params.logprobs is not None:
        _show_logprobs(completion.logprobs or [])
    if note and "JSON" in note:
        print(f"warning: the output is {note}; {'--out ' + args.out + ' holds the text' if args.out else ''}"
              .rstrip("; "))
    return value


def _show_logprobs(tokens: list[dict]) -> None:
    """Each token with its probability and the top alternatives there: a small table."""
    import math

    from IPython.display import display

    from ..formatting import html_table, text_table

    def pct(logprob) -> str:
        return f"{100 * math.exp(logprob):.1f}%"

    rows = [[repr(t.get("token", "")), f"{t.get('logprob', 0.0):.3f}", pct(t.get("logprob", 0.0)),
             ", ".join(f"{a.get('token', '')!r} {pct(a.get('logprob', 0.0))}" for a in t.get("top_logprobs") or [])]
            for t in tokens]
    headers = ["token", "logprob", "p", "top alternatives"]
    display({"text/plain": text_table(headers, rows),
             "text/html": "<details open><summary>logprobs</summary>" + html_table(headers, rows) + "</details>"},
            raw=True)


def _interrupted(shell, record, args, stream, display, chat, prompt, model_id, runtime) -> None:
    """Stop the generation now, keep the partial text (in --out and the chat), show it with a footer."""
    try:
        stream.close()
    except KeyboardInterrupt:
        pass
    from universal_kernel.widgets.stream_display import footer_text

    text = stream.text
    record(stream)
    ns = shell.user_ns
    if args.out:
        ns[args.out] = text
    if chat is not None:
        chat.messages.append({"role": "user", "content": prompt})
        chat.messages.append({"role": "assistant", "content": text})
    stats = stream.stats
    tokens = stats.completion_tokens or len(stream.parts)
    where = f"; partial text in {args.out}" if args.out else ""
    try:
        display.finish(footer_text(model_id, stats, tokens=tokens, memory_bytes=_memory(runtime),
                                   note=one_line(f"interrupted{where}")), text=text, fmt="text")
    except Exception:
        pass


def _failed(shell, record, args, stream, display, model_id, runtime, exc: RuntimeFailure) -> None:
    """A stream cut by a fault: the partial text stays (shown, and in --out), the footer counts the tokens
    that arrived, and one line names what happened. Raises the UsageError that carries that line."""
    from universal_kernel.widgets.stream_display import footer_text

    from ..client import ConnectionLost

    try:
        stream.close()
    except Exception:
        pass
    text = stream.text
    received = len(stream.parts)
    record(stream)
    if args.out:
        shell.user_ns[args.out] = text
    lost = isinstance(exc, ConnectionLost)
    line = exc.message
    if lost and received:
        line += "; the text above is incomplete" + (f" (it is in {args.out})" if args.out else "")
    stats = getattr(stream, "stats", None)
    if stats is not None:
        stats.completion_tokens = received
        footer = footer_text(model_id, stats, tokens=received, memory_bytes=None if lost else _memory(runtime),
                             note="connection lost" if lost else f"failed after {received} tokens")
    else:
        footer = f"{model_id} \u00b7 failed after {received} tokens"
    try:
        display.finish(footer, text=text, fmt="text")
    except Exception:
        pass
    raise UsageError(one_line(line)) from None
