"""Soak: mixed load on one real `jupyter server` for minutes; errors, memory growth, status latency.

One server with SmolLM2 and MiniLM preloaded, on loopback. For `--minutes` (default 10):
- two clients each stream chat completions back to back (`stream_options.include_usage`); a stream
  is whole when it ends with a finish_reason, its usage and `data: [DONE]`, with no error event;
- one client posts embedding batches (32 mixed texts, new ones each time);
- one client unloads and reloads MiniLM every `--cycle-s` seconds (the embedding client may load it
  first: a request for an unloaded model loads it);
- one client starts a stream and drops its connection after a few events, every `--disconnect-s`;
- one client polls `/universal/api/status` every 0.5 s and times it.
The server's RSS (psutil) is sampled every 5 s. Warm-up is the first fifth of the run (at most 2
minutes); growth is the end RSS over the RSS at the end of warm-up. Not run in CI; `--smoke` (about
25 s) is, through tests/test_bench_smoke.py, and fails on any error or broken stream.

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 2
    python bench/soak.py --smoke
    python bench/soak.py --minutes 3 --only embed --diagnose   # one kind of load; where the memory goes

`--only chat|embed|cycle|status` runs one kind of client alone (chat: the two streamers and the dropped
streams; cycle: MiniLM unload/load), to tell which load the memory follows. `--diagnose` traces the
server's Python allocations (tracemalloc, through UNIVERSAL_KERNEL_TRACEMALLOC_DIR and SIGUSR1) and prints
the lines that grew most between the end of warm-up and the end, beside /proc/PID/smaps_rollup at both
points (native memory: llama.cpp, torch and the C heap are not in tracemalloc). Tracing slows the server.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _common import MINILM, SMOLLM, mixed_texts, parser, print_cpu, threads
from _server import BenchServer, server_ext_available

PROMPTS = ["Write a short story about a lighthouse.", "Describe a market in the morning.",
           "Explain how a bridge carries its load.", "Tell me about a winter in the mountains."]


class Soak:
    def __init__(self, server: BenchServer, seconds: float, max_tokens: int, cycle_s: float, disconnect_s: float,
                 only: str = "mixed", warm_s: float = 0.0, snapshots: Path | None = None):
        import requests

        self.only = only
        self.warm_s = warm_s
        self.snapshots = snapshots  # the server dumps tracemalloc snapshots there on SIGUSR1
        self.smaps: list[tuple[float, dict]] = []  # (seconds, smaps_rollup) at the end of warm-up and at the end

        self.requests = requests
        self.server = server
        self.seconds = seconds
        self.max_tokens = max_tokens
        self.cycle_s = cycle_s
        self.disconnect_s = disconnect_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.served: Counter = Counter()
        self.errors: list[str] = []
        self.streams_whole = 0
        self.streams_broken: list[str] = []
        self.tokens = 0
        self.status_ms: list[float] = []
        self.rss: list[tuple[float, int]] = []

    def session(self):
        s = self.requests.Session()
        s.headers.update(self.server.session.headers)
        return s

    def error(self, what: str, detail) -> None:
        with self.lock:
            self.errors.append(f"{what}: {str(detail)[:200]}")

    def count(self, what: str) -> None:
        with self.lock:
            self.served[what] += 1

    # Clients ------------------------------------------------------------------------------
    def streamer(self, i: int) -> None:
        session = self.session()
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {"model": SMOLLM, "messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                    "max_tokens": self.max_tokens, "temperature": 0.7, "seed": i * 100000 + n, "stream": True,
                    "stream_options": {"include_usage": True}}
            try:
                with session.post(f"{self.server.base}/v1/chat/completions", json=body, stream=True,
                                  timeout=300) as r:
                    if r.status_code != 200:
                        self.error("stream", f"HTTP {r.status_code} {r.text[:200]}")
                        continue
                    events = [line[6:] for line in r.iter_lines() if line.startswith(b"data: ")]
            except self.requests.RequestException as exc:
                self.error("stream", repr(exc))
                continue
            self.count("chat stream")
            finish = usage = None
            pieces = 0
            failed = None
            for data in events[:-1]:
                event = json.loads(data)
                if "error" in event:
                    failed = event["error"]
                    continue
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    pieces += bool((choice.get("delta") or {}).get("content"))
            whole = bool(events) and events[-1] == b"[DONE]" and finish in ("stop", "length") and usage \
                and failed is None
            with self.lock:
                self.tokens += (usage or {}).get("completion_tokens", pieces)
                if whole:
                    self.streams_whole += 1
                else:
                    self.streams_broken.append(f"finish={finish} usage={bool(usage)} error={failed} "
                                               f"last={events[-1][:60] if events else None!r}")
            if failed is not None:
                self.error("stream", failed)

    def embedder(self) -> None:
        session = self.session()
        n = 0
        while not self.stop.is_set():
            n += 1
            texts = mixed_texts(32, seed=1000 + n, duplicates=0.1)
            try:
                r = session.post(f"{self.server.base}/v1/embeddings", json={"model": MINILM, "input": texts},
                                 timeout=300)
                if r.status_code != 200:
                    self.error("embed", f"HTTP {r.status_code} {r.text[:200]}")
                    continue
                rows = r.json()["data"]
                if len(rows) != len(texts) or len(rows[0]["embedding"]) != 384:
                    self.error("embed", f"{len(rows)} rows for {len(texts)} texts")
                    continue
                self.count("embedding batch")
            except (self.requests.RequestException, ValueError, KeyError) as exc:
                self.error("embed", repr(exc))

    def cycler(self) -> None:
        session = self.session()
        while not self.stop.wait(self.cycle_s):
            for path, body in (("api/unload", {"model": MINILM}), ("api/load", {"model": MINILM})):
                try:
                    r = session.post(f"{self.server.base}/{path}", json=body, timeout=300)
                    if r.status_code != 200:
                        self.error(path, f"HTTP {r.status_code} {r.text[:200]}")
                    else:
                        self.count(path.split("/")[1])
                except self.requests.RequestException as exc:
                    self.error(path, repr(exc))

    def disconnector(self) -> None:
        n = 0
        while not self.stop.wait(self.disconnect_s):
            n += 1
            session = self.session()
            body = {"model": SMOLLM, "prompt": "Once upon a time", "max_tokens": 512, "temperature": 0.8,
                    "seed": n, "stream": True}
            try:
                r = session.post(f"{self.server.base}/v1/completions", json=body, stream=True, timeout=300)
                if r.status_code != 200:
                    self.error("disconnect", f"HTTP {r.status_code} {r.text[:200]}")
                    continue
                seen = 0
                for line in r.iter_lines():
                    seen += line.startswith(b"data: ")
                    if seen >= 3 or self.stop.is_set():
                        break
                r.close()  # drop the connection mid-stream: the server must cancel the generation
                self.count("dropped stream")
            except self.requests.RequestException as exc:
                self.error("disconnect", repr(exc))
            finally:
                session.close()

    def poller(self) -> None:
        session = self.session()
        while not self.stop.wait(0.5):
            start = time.perf_counter()
            try:
                r = session.get(f"{self.server.base}/api/status", timeout=60)
                elapsed = (time.perf_counter() - start) * 1000
                if r.status_code != 200:
                    self.error("status", f"HTTP {r.status_code}")
                    continue
                with self.lock:
                    self.status_ms.append(elapsed)
                self.count("status")
            except self.requests.RequestException as exc:
                self.error("status", repr(exc))

    def mark(self, at: float) -> None:
        """The server's native figures now, and a tracemalloc snapshot when diagnosing."""
        from universal_kernel.memory_trend import smaps_rollup

        self.smaps.append((at, smaps_rollup(self.server.proc.pid)))
        if self.snapshots is not None:
            count = len(list(self.snapshots.glob("*.tracemalloc")))
            self.server.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 120
            while len(list(self.snapshots.glob("*.tracemalloc"))) <= count and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # the file is written whole before the next read

    def sampler(self, process) -> None:
        started = time.monotonic()
        marked = False
        while True:
            if not marked and time.monotonic() - started >= self.warm_s:
                marked = True
                self.mark(time.monotonic() - started)
            try:
                self.rss.append((time.monotonic() - started, process.memory_info().rss))
            except Exception:  # noqa: BLE001 - the process is gone: the clients report it
                return
            if self.stop.wait(5.0):
                return

    def run(self) -> None:
        import psutil

        process = psutil.Process(self.server.proc.pid)
        workers = [threading.Thread(target=self.sampler, args=(process,), daemon=True)]
        kinds = {"chat": [self.disconnector], "embed": [self.embedder], "cycle": [self.cycler],
                 "status": [self.poller], "mixed": [self.embedder, self.cycler, self.disconnector, self.poller]}
        if self.only in ("chat", "mixed"):
            workers += [threading.Thread(target=self.streamer, args=(i,), daemon=True) for i in range(2)]
        workers += [threading.Thread(target=fn, daemon=True) for fn in kinds[self.only]]
        for w in workers:
            w.start()
        self.stop.wait(self.seconds)
        self.stop.set()
        for w in workers:
            w.join(timeout=300)
        try:
            self.rss.append((self.seconds, process.memory_info().rss))
            self.mark(self.seconds)
        except Exception:  # noqa: BLE001
            pass


def diagnosis(soak: Soak) -> None:
    """What grew between the end of warm-up and the end: native figures, then Python's by line."""
    mib = 2**20
    if len(soak.smaps) >= 2 and soak.smaps[0][1] and soak.smaps[-1][1]:
        (t0, first), (t1, last) = soak.smaps[0], soak.smaps[-1]
        print(f"\n/proc/PID/smaps_rollup at {t0:.0f} s and {t1:.0f} s (MiB):")
        for name in ("Rss", "Pss", "Anonymous", "Private_Dirty", "Private_Clean", "Shared_Clean", "Swap"):
            if name in first and name in last:
                print(f"- {name}: {first[name] / mib:,.1f} \u2192 {last[name] / mib:,.1f} "
                      f"({(last[name] - first[name]) / mib:+,.1f})")
    if soak.snapshots is None:
        return
    import tracemalloc

    files = sorted(soak.snapshots.glob("*.tracemalloc"), key=lambda f: int(f.stem.split("-")[1]))
    if len(files) < 2:
        print(f"\ntracemalloc: {len(files)} snapshot(s) written; two are needed")
        return
    before, after = tracemalloc.Snapshot.load(str(files[0])), tracemalloc.Snapshot.load(str(files[-1]))
    total = sum(s.size for s in after.statistics("filename")) - sum(s.size for s in before.statistics("filename"))
    print(f"\ntracemalloc: Python allocations {total / mib:+,.2f} MiB between the two points; the lines that grew most:")
    for stat in sorted(after.compare_to(before, "lineno"), key=lambda stat: stat.size_diff, reverse=True)[:12]:
        frame = stat.traceback[0]
        print(f"- {stat.size_diff / 1024:+,.1f} KiB ({stat.count_diff:+,} blocks) {frame.filename}:{frame.lineno}")


def table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measure", "value", "goal", "")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the mixed load (default 10)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per chat stream (default 96)")
    p.add_argument("--cycle-s", type=float, default=None, help="seconds between MiniLM unload/load cycles")
    p.add_argument("--disconnect-s", type=float, default=None, help="seconds between dropped streams (30)")
    p.add_argument("--only", choices=("mixed", "chat", "embed", "cycle", "status"), default="mixed",
                   help="one kind of load alone (default: all of them)")
    p.add_argument("--diagnose", action="store_true",
                   help="tracemalloc snapshots and smaps_rollup diffed between warm-up and the end")
    args = p.parse_args(argv)
    print_cpu()
    if not server_ext_available():
        print("\n## Soak\n\n| measure | value |\n|---|---|\n\nnot measured: the server extension is not built")
        return 0
    seconds = 10.0 if args.smoke else args.minutes * 60
    max_tokens = args.max_tokens or (12 if args.smoke else 96)
    cycle_s = args.cycle_s or (4.0 if args.smoke else 20.0)
    disconnect_s = args.disconnect_s or (3.0 if args.smoke else 30.0)

    warm = min(seconds / 5, 120.0)
    snapshots = Path(tempfile.mkdtemp(prefix="soak-tracemalloc-")) if args.diagnose else None
    if snapshots is not None:
        os.environ["UNIVERSAL_KERNEL_TRACEMALLOC_DIR"] = str(snapshots)  # the server inherits it
    try:
        server = BenchServer([SMOLLM, MINILM], threads(args))
    finally:
        os.environ.pop("UNIVERSAL_KERNEL_TRACEMALLOC_DIR", None)
    try:
        soak = Soak(server, seconds, max_tokens, cycle_s, disconnect_s, args.only, warm, snapshots)
        soak.run()
        final = server.status()
    finally:
        stopped = time.monotonic()
        server.close()
        stop_s = time.monotonic() - stopped

    rss = soak.rss
    start_rss = rss[0][1] if rss else 0
    after_warm = next((value for t, value in rss if t >= warm), rss[-1][1] if rss else 0)
    end_rss = rss[-1][1] if rss else 0
    growth = (end_rss - after_warm) / after_warm * 100 if after_warm else float("nan")
    status_ms = np.array(soak.status_ms or [float("nan")])
    served = sum(soak.served.values())
    completed = soak.streams_whole + len(soak.streams_broken)
    cancelled = sum(1 for r in final.get("recent", []) if r.get("finish_reason") == "cancelled")
    mib = 2**20
    rows = [
        ("requests served", f"{served:,} ({', '.join(f'{k} {v}' for k, v in sorted(soak.served.items()))})", "", ""),
        ("errors", str(len(soak.errors)), "0", "PASS" if not soak.errors else "MISS"),
        ("completed streams whole", f"{soak.streams_whole}/{completed} ({soak.tokens:,} tokens)", "all",
         ("PASS" if completed and not soak.streams_broken else "MISS") if args.only in ("mixed", "chat") else "-"),
        ("server RSS at start", f"{start_rss / mib:,.1f} MiB", "", ""),
        (f"server RSS after warm-up ({warm:.0f} s)", f"{after_warm / mib:,.1f} MiB", "", ""),
        ("server RSS at end", f"{end_rss / mib:,.1f} MiB", "", ""),
        ("RSS growth after warm-up", f"{growth:+.2f} %", "< 5 %", "PASS" if growth < 5 else "MISS"),
        ("/universal/api/status p50", f"{np.percentile(status_ms, 50):.1f} ms", "", ""),
        ("/universal/api/status p99", f"{np.percentile(status_ms, 99):.1f} ms (n={len(soak.status_ms)})",
         "< 50 ms", "PASS" if np.percentile(status_ms, 99) < 50 else "MISS"),
        ("server exit after SIGTERM", f"{stop_s:.1f} s", "", ""),
    ]
    load = "mixed load" if args.only == "mixed" else f"{args.only} load only"
    print(f"\n## Soak: {seconds / 60:.1f} min of {load} on one server\n")
    table(rows)
    print(f"\nClients ({args.only}): 2 chat streams of {max_tokens} tokens back to back, embedding batches of 32, MiniLM unload/load "
          f"every {cycle_s:g} s, a stream dropped every {disconnect_s:g} s, status every 0.5 s; "
          f"cancelled generations in the server's recent list: {cancelled}.")
    step = max(1, len(rss) // 12)
    print("server RSS over the run (s: MiB): " + ", ".join(f"{t:.0f}: {value / mib:,.0f}" for t, value in rss[::step]
                                                          + ([rss[-1]] if (len(rss) - 1) % step else [])))
    diagnosis(soak)
    for line in (soak.errors[:10] + soak.streams_broken[:10]):
        print(f"- {line}")
    streamed = completed or args.only not in ("mixed", "chat")  # streams are asked for: they must come whole
    return 0 if (not soak.errors and not soak.streams_broken and streamed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
