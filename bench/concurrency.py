"""Concurrent HTTP streams on one GGUF model: aggregate tokens/s of 1, 4 and 8 streams, and TTFT of a joiner.

Our side is a real `jupyter server` with the extension (`--UniversalKernelApp.parallel=8`); the anchor
is llama-cpp-python's own server (`python -m llama_cpp.server`, `interrupt_requests: false` so that a
new request waits instead of cutting the stream in flight), with the same GGUF file, context, threads
and flash attention. Each run sends N streamed `/v1/completions` at once (greedy, distinct prompts,
`max_tokens` each); aggregate tokens/s is all completion tokens over the wall time until the last
stream ends. One stream is also compared with raw `llama_cpp.Llama.create_completion` in this process.
The prompts share their first words; every side reuses the cells of the prefix it already holds (raw
llama-cpp-python and its server their one context's, ours a slot's: llama_shapes.py).
TTFT of a joiner: a request sent while three others stream, against the same request on an idle model.
Sides run in turn, the order rotating each run; ratios are of medians.

    python bench/concurrency.py            # 64 tokens per stream, 5 runs
    python bench/concurrency.py --smoke    # 4 tokens, 1 run, no anchor server
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import SMOLLM, Row, median, mixed_texts, parser, print_cpu, print_table, threads
from _server import TOKEN, BenchServer

from universal_kernel.backends.llama_amx import LLAMA_SERVER

LEVELS = (1, 4, 8)


def prompts(n: int, seed: int) -> list[str]:
    topics = mixed_texts(n, seed=seed, duplicates=0.0)
    return [f"Write a long, detailed essay about the following topic.\nTopic: {t[:80]}\nEssay:" for t in topics]


class Endpoint:
    """An OpenAI-compatible server's streamed /v1/completions."""

    def __init__(self, base: str, key: str, model: str):
        import requests

        self.base, self.model = base, model
        self.local = threading.local()
        self.headers = {"Authorization": f"Bearer {key}"}
        self._requests = requests

    def session(self):
        if not hasattr(self.local, "session"):
            self.local.session = self._requests.Session()
            self.local.session.headers.update(self.headers)
        return self.local.session

    def stream(self, prompt: str, max_tokens: int) -> tuple[float, float, str]:
        """(start, first piece, end) times and the text."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        start = time.perf_counter()
        first, parts = None, []
        with self.session().post(f"{self.base}/completions", json=body, stream=True, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line[6:] == b"[DONE]":
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                piece = "".join(c.get("text") or "" for c in event.get("choices", []))
                if piece and first is None:
                    first = time.perf_counter()
                parts.append(piece)
        return start, first or time.perf_counter(), time.perf_counter(), "".join(parts)


def together(endpoint: Endpoint, texts: list[str], max_tokens: int, count) -> float:
    """Aggregate completion tokens/s of the texts streamed at once."""
    results = [None] * len(texts)

    def one(i):
        results[i] = endpoint.stream(texts[i], max_tokens)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    end = max(r[2] for r in results)
    return sum(count(r[3]) for r in results) / (end - start)


def joiner_ttft(endpoint: Endpoint, running: list[str], joiner: str, max_tokens: int) -> float:
    """TTFT of `joiner` sent once the `running` streams have produced their first piece."""
    started = threading.Barrier(len(running) + 1)
    done = []

    def one(prompt):
        first_seen = False
        body = {"model": endpoint.model, "prompt": prompt, "max_tokens": max_tokens * 4, "temperature": 0,
                "stream": True}
        with endpoint.session().post(f"{endpoint.base}/completions", json=body, stream=True, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: ") and not first_seen:
                    first_seen = True
                    started.wait()
        done.append(prompt)

    workers = [threading.Thread(target=one, args=(p,)) for p in running]
    for w in workers:
        w.start()
    started.wait()
    start, first, _, _ = endpoint.stream(joiner, 4)
    for w in workers:
        w.join()
    return first - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """llama-cpp-python's installable server with the same model settings as ours."""

    def __init__(self, settings: dict, threads: int):
        import requests

        self.tmp = tempfile.TemporaryDirectory()
        folder = Path(self.tmp.name)
        self.port = free_port()
        model = {"model": settings["model_path"], "model_alias": SMOLLM, "n_ctx": settings["n_ctx"],
                 "n_threads": threads, "n_threads_batch": threads, "flash_attn": settings["flash_attn"],
                 "n_gpu_layers": settings["n_gpu_layers"], "verbose": False}
        config = {"host": "127.0.0.1", "port": self.port, "api_key": TOKEN, "interrupt_requests": False,
                  "models": [model]}
        (folder / "config.json").write_text(json.dumps(config))
        self.log = open(folder / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", LLAMA_SERVER, "--config_file",
                                      str(folder / "config.json")], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=folder)
        self.base = f"http://127.0.0.1:{self.port}/v1"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((folder / "server.log").read_text(errors="replace")[-2000:])
            try:
                if requests.get(f"{self.base}/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not start")
            time.sleep(0.3)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        self.tmp.cleanup()


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--no-anchor", action="store_true", help="skip llama-cpp-python's server")
    args = p.parse_args(argv)
    print_cpu()
    max_tokens = args.max_tokens or (4 if args.smoke else 64)
    repeats = args.repeats or (1 if args.smoke else 5)
    nthreads = threads(args)
    levels = (1, 4) if args.smoke else LEVELS

    from universal_kernel.backends.llama_cpp import llama_library


    llama_cpp = llama_library()  # the AMX guard (backends/llama_amx.py), as the runtime loads

    from universal_kernel import Runtime, RuntimeConfig

    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads, parallel=1), reaper=False)
    rt.load(SMOLLM)
    settings = rt.cache.entries()[0].backend.library_settings()
    rt.close()
    raw = llama_cpp.Llama(**settings, verbose=False)
    vocab = llama_cpp.Llama(model_path=settings["model_path"], vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0

    def raw_rate(prompt: str) -> float:
        # no reset: raw llama-cpp-python reuses the prefix its context holds, as our slots do
        start = time.perf_counter()
        text = "".join(c["choices"][0]["text"] for c in raw.create_completion(
            prompt, max_tokens=max_tokens, temperature=0, stream=True))
        return count(text) / (time.perf_counter() - start)

    ours = BenchServer([SMOLLM], nthreads, extra=("--UniversalKernelApp.parallel=8",
                                                  "--UniversalKernelApp.queue_length=16"))
    endpoints = {"ours": Endpoint(ours.base + "/v1", TOKEN, SMOLLM)}
    anchor = None
    if not args.smoke and not args.no_anchor:
        anchor = LlamaCppServer(settings, nthreads)
        endpoints["llama_cpp.server"] = Endpoint(anchor.base, TOKEN, SMOLLM)
    try:
        texts = prompts(max(levels) * (repeats + 1) + 2 * repeats + 8, seed=11)
        for endpoint in endpoints.values():  # warm-up
            together(endpoint, texts[:2], max_tokens, count)
        raw_rate(texts[0])
        res = {(name, n): [] for name in endpoints for n in levels}
        res["raw", 1] = []
        ttft = {(name, kind): [] for name in endpoints for kind in ("idle", "join")}
        for i in range(repeats):
            batch = texts[(i + 1) * max(levels):(i + 2) * max(levels)]
            order = [("raw", 1)] + [(name, n) for name in endpoints for n in levels]
            shift = i % len(order)
            for name, n in order[shift:] + order[:shift]:
                if name == "raw":
                    res[name, n].append(raw_rate(batch[0]))
                else:
                    res[name, n].append(together(endpoints[name], batch[:n], max_tokens, count))
                print(f"  run {i + 1}/{repeats} {name} x{n}: {res[name, n][-1]:.1f} tok/s", file=sys.stderr,
                      flush=True)
            if not args.smoke:
                for name, endpoint in endpoints.items():
                    # two prompts of one shape, each new to the server: the second must not find the
                    # first one's cells in a slot
                    ttft[name, "idle"].append(_ttft(endpoint, texts[-1 - 2 * i]))
                    ttft[name, "join"].append(joiner_ttft(endpoint, batch[1:4], texts[-2 - 2 * i], max_tokens))
    finally:
        ours.close()
        if anchor is not None:
            anchor.close()
        raw.close()

    rows = [Row("1 HTTP stream vs raw create_completion", "ours x1", res["ours", 1], "raw", res["raw", 1],
                "tok/s", "ratio>=", 0.97)]
    targets = {4: 1.35, 8: 1.55}
    for name in endpoints:
        for n in levels[1:]:
            rows.append(Row(f"{name}: {n} streams vs 1 (aggregate)", f"x{n}", res[name, n], "x1", res[name, 1],
                            "tok/s", "ratio>=" if name == "ours" else "", targets.get(n) if name == "ours" else None))
    if not args.smoke:
        for name in endpoints:
            rows.append(Row(f"{name}: TTFT joining 3 running streams vs idle", "join",
                            [x * 1000 for x in ttft[name, "join"]], "idle", [x * 1000 for x in ttft[name, "idle"]],
                            "ms", "ratio<=" if name == "ours" else "", 2.0 if name == "ours" else None))
    if "llama_cpp.server" in endpoints:
        for n in levels:
            rows.append(Row(f"ours vs llama_cpp.server, {n} streams", "ours", res["ours", n], "llama_cpp.server",
                            res["llama_cpp.server", n], "tok/s"))
    notes = [f"SmolLM2-135M-Instruct Q4_1, greedy, max_tokens={max_tokens} per stream, n_ctx={settings['n_ctx']} "
             f"per sequence, flash attention {settings['flash_attn']}, {nthreads} threads; our server "
             f"--UniversalKernelApp.parallel=8; runs: {repeats}, sides rotating; medians: "
             + ", ".join(f"{name} x{n} {median(v):.1f}" for (name, n), v in res.items())]
    print_table("Concurrent streams on one GGUF model", rows, notes)
    return 0


def _ttft(endpoint: Endpoint, prompt: str) -> float:
    start, first, _, _ = endpoint.stream(prompt, 4)
    return first - start


if __name__ == "__main__":
    os.environ.setdefault("UNIVERSAL_KERNEL_EMBEDDING_CACHE", "off")
    raise SystemExit(main())
