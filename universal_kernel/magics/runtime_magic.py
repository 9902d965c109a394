"""`%runtime status|models|load M|unload M|alias NAME REF|monitor|use local|use server [URL]`."""

from __future__ import annotations

import html

from IPython.core.error import UsageError

from ..formatting import duration, expiry, mib

ACTIONS = ("status", "models", "load", "unload", "alias", "monitor", "use")


def _text_table(headers: list[str], rows: list[list]) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), *(line(r) for r in rows)])


def _html_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _tokens(request: dict) -> str:
    """Generated tokens; for embeddings, the input tokens ("12 in")."""
    if request.get("kind") == "embed":
        return f"{request.get('prompt_tokens', 0)} in"
    return str(request.get("completion_tokens", 0))


class RuntimeStatus(dict):
    """`%runtime status`: the status dict, shown as a short report."""

    def _rows(self):
        models = [[m.get("id"), m.get("backend"), m.get("device"), mib(m.get("size_bytes")), expiry(m),
                   m.get("queue_depth", 0), (m.get("figures") or {}).get("requests", 0)]
                  for m in self.get("models") or []]
        recent = [[r.get("model"), r.get("kind"), duration(r.get("queue_wait_s")), duration(r.get("ttft_s")),
                   f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-", _tokens(r),
                   duration(r.get("total_s")), r.get("finish_reason") or "running"]
                  for r in (self.get("recent") or [])[-5:]]
        return models, recent

    def _memory_line(self) -> str:
        memory = self.get("memory") or {}
        line = (f"process RSS {mib(memory.get('process_rss_bytes'))}, system "
                f"{mib(memory.get('system_available_bytes'))} available of {mib(memory.get('system_total_bytes'))}")
        for gpu in memory.get("gpus") or []:
            line += (f"; GPU{gpu.get('index')} {mib(gpu.get('allocated_bytes'))} allocated, "
                     f"{mib(gpu.get('free_bytes'))} free of {mib(gpu.get('total_bytes'))}")
        return line

    MODEL_HEADERS = ["model", "backend", "device", "size", "expires", "queue", "requests"]
    RECENT_HEADERS = ["model", "kind", "queue wait", "TTFT", "tokens/s", "tokens", "total", "finish"]

    def __repr__(self) -> str:
        models, recent = self._rows()
        parts = [f"memory: {self._memory_line()}", f"loaded models ({len(models)}):"]
        parts.append(_text_table(self.MODEL_HEADERS, models) if models else "  none")
        if recent:
            parts += ["recent requests:", _text_table(self.RECENT_HEADERS, recent)]
        return "\n".join(parts)

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_html_(self) -> str:
        models, recent = self._rows()
        out = f"<div><b>memory</b>: {html.escape(self._memory_line())}</div>"
        out += f"<div><b>loaded models</b> ({len(models)})</div>" + (_html_table(self.MODEL_HEADERS, models)
                                                                     if models else "<div>none</div>")
        if recent:
            out += "<div><b>recent requests</b></div>" + _html_table(self.RECENT_HEADERS, recent)
        return out


class ModelList(list):
    """`%runtime models`: every servable model, loaded state included."""

    def _rows(self):
        return [[m.get("id"), m.get("task", "-"), m.get("format", "-"), mib(m.get("size_bytes")),
                 "yes" if m.get("loaded") else "no"] for m in self]

    def __repr__(self) -> str:
        return _text_table(["model", "task", "format", "size", "loaded"], self._rows())

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_html_(self) -> str:
        return _html_table(["model", "task", "format", "size", "loaded"], self._rows())


def _remote_models(models: list[dict]) -> list[dict]:
    """OpenAI model objects -> the local shape (the extension may add its own fields)."""
    out = []
    for m in models:
        out.append({"id": m.get("id"), "task": m.get("task", "-"), "format": m.get("format", "-"),
                    "size_bytes": m.get("size_bytes"), "loaded": m.get("loaded", False)})
    return out


def _expect(args, count: int, usage: str) -> list[str]:
    if len(args.args) != count:
        raise UsageError(f"usage: %runtime {usage}")
    return args.args


def run_runtime(magics, args):
    action = args.action
    if action not in ACTIONS:
        raise UsageError(f"unknown %runtime action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "use":
        return _use(magics, args)
    runtime = magics.runtime_for(args.server)
    remote = type(runtime).__name__ == "RemoteRuntime"
    if action == "status":
        _expect(args, 0, "status")
        return RuntimeStatus(runtime.status())
    if action == "models":
        _expect(args, 0, "models")
        models = runtime.models()
        return ModelList(_remote_models(models) if remote else models)
    if action == "load":
        (model,) = _expect(args, 1, "load MODEL [--backend B] [--keep-alive S]")
        entry = runtime.load(model, backend=args.backend, keep_alive=args.keep_alive)
        entry = entry if isinstance(entry, dict) else {}
        where = "on the server" if remote else ""
        backend = entry.get("backend", args.backend)
        print(" ".join(f"loaded {model} {where} ({backend}, {entry.get('device', '-')}, "
                       f"{mib(entry.get('size_bytes'))}) in {duration(entry.get('load_s'))}".split()))
        return None
    if action == "unload":
        if len(args.args) > 1:
            raise UsageError("usage: %runtime unload MODEL (or `all`)")
        model = None if not args.args or args.args[0] == "all" else args.args[0]
        if not args.args:
            raise UsageError("usage: %runtime unload MODEL (or `all`)")
        result = runtime.unload(model)
        results = result if isinstance(result, list) else (result or {}).get("results", [result])
        if not results:
            print(f"{model or 'no model'} was not loaded")
        else:
            print(f"{model or 'all models'}: {', '.join(str(r) for r in results)}")
        return None
    if action == "alias":
        name, ref = _expect(args, 2, "alias NAME REF")
        spec = runtime.alias(name, ref)
        print(f"{name} -> {spec.path} ({spec.format}, {spec.task})")
        return None
    if action == "monitor":
        _expect(args, 0, "monitor [--interval S] [--server]")
        from universal_kernel.widgets.monitor import Monitor

        return Monitor(runtime, interval=args.interval)
    raise UsageError(f"unknown %runtime action {action!r}")  # pragma: no cover


def _use(magics, args):
    if not args.args or args.args[0] not in ("local", "server"):
        raise UsageError("usage: %runtime use local | %runtime use server [URL] [--token TOKEN]")
    if args.args[0] == "local":
        if len(args.args) != 1:
            raise UsageError("usage: %runtime use local")
        magics.use_server = False
        print("magics use the in-process runtime")
        return None
    if len(args.args) > 2:
        raise UsageError("usage: %runtime use server [URL] [--token TOKEN]")
    url = args.args[1] if len(args.args) == 2 else None
    remote = magics.remote_runtime(url, args.token, reconnect=True)
    remote.status()  # fail now, not at the next magic, when the server is not there
    magics.use_server = True
    print(f"magics use the Jupyter server's runtime at {remote.base}")
    return None
