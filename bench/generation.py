"""GGUF generation: SmolLM2 through the runtime against raw `llama_cpp.Llama.create_completion`.

Same GGUF file, same context size and threads, same sampling (greedy), same prompts, one process,
sides interleaved. Both sides are timed from the caller: tokens/s is completion tokens over the
wall time of the whole streamed call, time to first token is the wall time to the first text piece.
Paths: `runtime.stream`, the HTTP API (`/v1/completions`, streamed, on a real `jupyter server`
with the extension) and `%%generate` (an IPython shell; chat template, so its peer is raw llama.cpp
on the same templated prompt). Each repetition uses a new prompt (the same one for both sides) so llama.cpp's prefix cache helps
neither side more than the other.

    python bench/generation.py             # 128 tokens, 7 runs per side
    python bench/generation.py --smoke     # 8 tokens, 1 run, no HTTP server
"""

from __future__ import annotations

import time

from _common import SMOLLM, Row, mixed_texts, parser, print_cpu, print_table, threads
from _server import BenchServer, server_ext_available

SAMPLING = dict(temperature=0.0, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)


def prompts(n: int) -> list[str]:
    topics = mixed_texts(n, seed=7, duplicates=0.0)
    return [f"Write a long, detailed essay about the following topic.\nTopic: {t[:80]}\nEssay:" for t in topics]


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--no-http", action="store_true", help="skip the HTTP API path (starts a jupyter server)")
    args = p.parse_args(argv)
    print_cpu()
    max_tokens = args.max_tokens or (8 if args.smoke else 128)
    repeats = args.repeats or (1 if args.smoke else 7)
    nthreads = threads(args)

    from universal_kernel.backends.llama_cpp import llama_library


    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    from universal_kernel import Runtime, RuntimeConfig

    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads), reaper=False)
    rt.load(SMOLLM)
    n_ctx = rt.cache.entries()[0].backend.n_ctx
    raw = llama_cpp.Llama(**rt.cache.entries()[0].backend.library_settings(), verbose=False)  # the same settings
    texts = prompts(repeats + 1)

    def ours(prompt: str) -> tuple[float, float, int, str]:
        start = time.perf_counter()
        first = None
        with rt.stream(SMOLLM, prompt=prompt, params=dict(SAMPLING, max_tokens=max_tokens)) as stream:
            for _ in stream:
                if first is None:
                    first = time.perf_counter()
            done = stream.completion
        total = time.perf_counter() - start
        return done.completion_tokens / total, first - start, done.completion_tokens, done.text

    def count(text: str) -> int:
        return len(raw.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0

    _state.update(max_tokens=max_tokens, count=count)

    def peer(prompt: str, stop: list[str] | None = None) -> tuple[float, float, int, str]:
        start = time.perf_counter()
        first = None
        parts = []
        for chunk in raw.create_completion(prompt, max_tokens=max_tokens, stream=True, stop=stop or None,
                                           **SAMPLING):
            if first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter()
            parts.append(chunk["choices"][0]["text"])
        total = time.perf_counter() - start
        text = "".join(parts)
        tokens = count(text)  # counted as the runtime counts: the completion text tokenized again
        return tokens / total, first - start, tokens, text

    sides = {"runtime": ours, "raw": peer}
    server = None
    if not args.smoke and not args.no_http and server_ext_available():
        server = BenchServer([SMOLLM], nthreads)
        sides["http"] = lambda prompt: http(server, prompt)
    shell = magic_shell(rt) if magics_available() else None
    backend = rt.cache.entries()[0].backend
    if shell is not None:
        sides["magic"] = lambda prompt: magic(shell, prompt)
        sides["raw-chat"] = lambda prompt: peer(*backend.chat_prompt([{"role": "user", "content": prompt}]))

    # warm-up on the spare prompt; then every side in turn, the order rotating from run to run
    for fn in sides.values():
        fn(texts[-1])
    res = {name: [] for name in sides}
    names = list(sides)
    for i in range(repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            res[name].append(sides[name](texts[i]))
    if server is not None:
        server.close()

    def col(name, k):
        return [r[k] for r in res[name]]

    def same(a, b):
        return sum(x[3] == y[3] for x, y in zip(res[a], res[b]))

    pairs = [("runtime.stream", "runtime", "raw")]
    if "http" in res:
        pairs.append(("HTTP /v1/completions stream", "http", "raw"))
    if "magic" in res:
        pairs.append(("%%generate (chat template)", "magic", "raw-chat"))
    rows = []
    for label, a, b in pairs:
        rows.append(Row(f"tokens/s, {label}", a, col(a, 0), b, col(b, 0), "tok/s", "ratio>=", 0.97))
        rows.append(Row(f"time to first token, {label}", a, [x * 1000 for x in col(a, 1)], b,
                        [x * 1000 for x in col(b, 1)], "ms", "diff<=", 15))
    notes = [
        f"SmolLM2-135M-Instruct Q4_1, greedy, max_tokens={max_tokens}, n_ctx={n_ctx}, {nthreads} threads; "
        f"runs per side: {repeats} (every side in turn, the order rotating each run); tokens/s and time to "
        "first token are wall times seen by the caller",
    ]
    for label, a, b in pairs:
        notes.append(f"{label}: completion tokens {a} {col(a, 2)}, {b} {col(b, 2)}; identical text in "
                     f"{same(a, b)}/{repeats} runs")
    if "http" not in res:
        notes.append("HTTP API not measured" + (" (--smoke/--no-http)" if server_ext_available()
                                                 else " (server extension not built)"))
    if "magic" not in res:
        notes.append("%%generate not measured (magics not built)")
    print_table("Generation: runtime vs raw llama-cpp-python", rows, notes)
    raw.close()
    rt.close()
    return 0


def http(server, prompt: str) -> tuple[float, float, int, str]:
    start = time.perf_counter()
    first = None
    parts = []
    body = dict(SAMPLING, model=SMOLLM, prompt=prompt, max_tokens=_state["max_tokens"])
    for when, piece in server.stream_completion(body):
        if piece and first is None:
            first = when
        parts.append(piece)
    total = time.perf_counter() - start
    text = "".join(parts)
    tokens = _state["count"](text)
    return tokens / total, first - start, tokens, text


class _TimedStream:
    """Wraps the runtime's stream for %%generate: notes when the first piece reaches the cell."""

    def __init__(self, stream):
        self._stream = stream
        self.first = None

    def __iter__(self):
        return self

    def __next__(self):
        piece = next(self._stream)
        if self.first is None:
            self.first = time.perf_counter()
        return piece

    def __getattr__(self, name):
        return getattr(self._stream, name)


def magics_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("universal_kernel.magics.generate") is not None
    except ModuleNotFoundError:
        return False


def magic_shell(rt):
    from IPython.core.interactiveshell import InteractiveShell

    class Runtime:
        last = None

        def stream(self, *a, **kw):
            Runtime.last = _TimedStream(rt.stream(*a, **kw))
            return Runtime.last

        def __getattr__(self, name):
            return getattr(rt, name)

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "universal_kernel")
    from universal_kernel.magics import get_magics

    magics = get_magics(shell)
    magics.set_local_runtime(Runtime())
    magics.use_server = False
    return shell, magics, Runtime


def magic(shell_magics, prompt: str) -> tuple[float, float, int, str]:
    from IPython.utils.capture import capture_output

    shell, magics, recorder = shell_magics
    line = f"--max-tokens {_state['max_tokens']} --temperature 0 --format text -m {SMOLLM}"
    start = time.perf_counter()
    with capture_output():
        shell.run_cell_magic("generate", line, prompt)
    total = time.perf_counter() - start
    completion = magics.last_generation
    return (completion.completion_tokens / total, recorder.last.first - start, completion.completion_tokens,
            completion.text)


_state: dict = {}


if __name__ == "__main__":
    raise SystemExit(main())
