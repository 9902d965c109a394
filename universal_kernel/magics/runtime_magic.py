"""`%runtime status|models|load M|unload M|alias NAME REF|monitor|use local|use server [URL]|use dask [ADDRESS]|
pull REF|rm REF`."""

from __future__ import annotations

import html

from IPython.core.error import UsageError

from ..errors import RuntimeFailure

from ..formatting import (
    MODEL_HEADERS, REQUEST_HEADERS, duration, html_table, memory_line, mib, model_rows, precision_html,
    precision_notes, request_rows, text_table,
)
from .common import one_line

ACTIONS = ("status", "models", "load", "unload", "alias", "monitor", "use", "pull", "rm")
#: where `%runtime use` sends the magics' work
USE_TARGETS = ("local", "server", "dask")


class RuntimeStatus(dict):
    """`%runtime status`: the status dict, shown as a short report."""

    def _rows(self):
        return model_rows(self.get("models") or []), request_rows((self.get("recent") or [])[-5:])

    def _memory_line(self) -> str:
        return memory_line(self)

    def __repr__(self) -> str:
        models, recent = self._rows()
        if self.get("note"):  # a server without runtime API: only what this client measured
            return "\n".join([self["note"], "requests measured by this client:",
                              text_table(REQUEST_HEADERS, recent) if recent else "  none yet"])
        parts = [f"memory: {self._memory_line()}", f"loaded models ({len(models)}):"]
        parts.append(text_table(MODEL_HEADERS, models) if models else "  none")
        notes = precision_notes(self.get("models") or [])
        if notes:
            parts += ["precision:"] + [f"  {note}" for note in notes]
        if recent:
            parts += ["recent requests:", text_table(REQUEST_HEADERS, recent)]
        return "\n".join(parts)

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_html_(self) -> str:
        models, recent = self._rows()
        if self.get("note"):
            return (f"<div>{html.escape(self['note'])}</div><div><b>requests measured by this client</b></div>"
                    + html_table(REQUEST_HEADERS, recent))
        out = f"<div><b>memory</b>: {html.escape(self._memory_line())}</div>"
        out += f"<div><b>loaded models</b> ({len(models)})</div>" + (html_table(MODEL_HEADERS, models)
                                                                     if models else "<div>none</div>")
        out += precision_html(self.get("models") or [])
        if recent:
            out += "<div><b>recent requests</b></div>" + html_table(REQUEST_HEADERS, recent)
        return out


class ModelList(list):
    """`%runtime models`: every servable model, loaded state included."""

    def _rows(self):
        return [[m.get("id"), ", ".join(m.get("tasks") or [m.get("task") or "-"]), m.get("format", "-"),
                 mib(m.get("size_bytes")), {True: "yes", False: "no"}.get(m.get("loaded"), "-")] for m in self]

    def __repr__(self) -> str:
        return text_table(["model", "tasks", "format", "size", "loaded"], self._rows())

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self))

    def _repr_html_(self) -> str:
        return html_table(["model", "tasks", "format", "size", "loaded"], self._rows())


def _remote_models(models: list[dict]) -> list[dict]:
    """OpenAI model objects -> the local shape (the extension may add its own fields)."""
    out = []
    for m in models:
        out.append({"id": m.get("id"), "task": m.get("task", "-"), "tasks": m.get("tasks") or [],
                    "format": m.get("format", "-"),
                    "size_bytes": m.get("size_bytes"), "loaded": m.get("loaded")})  # None: not said
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
    remote = runtime.where != "local"
    if action in ("pull", "rm"):
        return _hub_action(runtime, action, args, remote)
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
        results = runtime.unload(model)["results"]
        if not results:
            print(f"{model or 'no model'} was not loaded")
        else:
            print(f"{model or 'all models'}: {', '.join(str(r) for r in results)}")
        return None
    if action == "alias":
        name, ref = _expect(args, 2, "alias NAME REF")
        before = getattr(getattr(runtime, "resolver", None), "aliases", {}).get(name)
        spec = runtime.alias(name, ref)
        # run again, the same line says the same; a new target for the name says what it replaced
        was = f"; it was {before}" if before is not None and before != ref else ""
        print(f"{name} -> {spec.path} ({spec.format}, {spec.task}){was}")
        return None
    if action == "monitor":
        _expect(args, 0, "monitor [--interval S] [--server]")
        from universal_kernel.widgets.monitor import Monitor

        return Monitor(runtime, interval=args.interval)
    raise UsageError(f"unknown %runtime action {action!r}")  # pragma: no cover


def _hub_action(runtime, action: str, args, remote: bool):
    """`%runtime pull REF` (a progress bar, then `ref -> path (size)`) and `%runtime rm REF`."""
    (ref,) = _expect(args, 1, f"{action} REF (org/repo, org/repo:QUANT, org/repo/file.gguf, @REV)")
    where = " on the server" if remote else ""
    if action == "rm":
        revisions = runtime.remove_pulled(ref)
        print(f"removed {ref} ({len(revisions)} revision{'s' if len(revisions) != 1 else ''}) from the Hugging "
              f"Face cache{where}")
        return None
    from ..hub_progress import PullDisplay

    result = runtime.pull(ref, progress=PullDisplay())
    print(f"{result.ref} -> {result.path}{where} ({mib(result.size_bytes)})")
    return None


def _use(magics, args):
    if not args.args or args.args[0] not in USE_TARGETS:
        raise UsageError("usage: %runtime use local | %runtime use server [URL] [--token TOKEN] | "
                         "%runtime use dask [ADDRESS]")
    if args.args[0] == "dask":
        from .dask_use import use_dask

        return use_dask(magics, args.args[1:])
    if args.args[0] == "local":
        if len(args.args) != 1:
            raise UsageError("usage: %runtime use local")
        magics.use_server = False
        print("magics use the in-process runtime")
        return None
    if len(args.args) > 2:
        raise UsageError("usage: %runtime use server [URL] [--token TOKEN]")
    url = args.args[1] if len(args.args) == 2 else None
    try:  # probe before anything changes: a failed `use` leaves the magics where they were, and says so
        remote = magics.connect_remote(url, args.token)
    except RuntimeFailure as exc:
        raise UsageError(one_line(f"{exc.message}; magics still use {magics.runtime_in_use()}")) from None
    current = magics._remote if magics.use_server else None
    if _same_server(current, remote):  # run again: the runtime in use stays, with what it measured and
        remote = current               # the monitors that watch it
    magics.use_remote(remote)
    if remote.has_runtime_api:
        print(f"magics use the Jupyter server's runtime at {remote.base}")
    else:
        print(f"magics use the OpenAI-compatible server at {remote.base} (default models: "
              f"{remote.default_generation_model or '-'} for %%generate, {remote.default_embedding_model or '-'} "
              f"for %embed); it has no universal-kernel runtime API: load, unload, alias and the task magics "
              f"are not available there")
    return None


def _same_server(current, probed) -> bool:
    return current is not None and (current.base, current.token, current.has_runtime_api) == (
        probed.base, probed.token, probed.has_runtime_api)
