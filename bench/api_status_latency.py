"""Jupyter server responsiveness: `/api/status` latency idle vs while four streams run.

A real `jupyter server` with the extension and SmolLM2 preloaded. Phases alternate, idle, busy,
idle, busy...; each phase times `--requests` GETs of Jupyter's own `/api/status` and as many of
the extension's `/universal/api/status` (which also reports every model's queue), taking turns,
and gives a p50 and a p99 for each.
Busy means four clients each streaming completions from `/v1/completions` (the runtime runs them
one at a time; the others wait in its queue). The table shows the medians over phases.

    python bench/api_status_latency.py            # 200 requests per phase, 3 phases of each
    python bench/api_status_latency.py --smoke    # 10 requests, 1 phase of each
"""

from __future__ import annotations

import threading
import time

import numpy as np

from _common import SMOLLM, Row, parser, print_cpu, print_table, threads
from _server import BenchServer, server_ext_available


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="status requests per phase")
    p.add_argument("--streams", type=int, default=4)
    args = p.parse_args(argv)
    print_cpu()
    if not server_ext_available():
        print_table("Jupyter /api/status latency", [], ["not measured: the server extension is not built"])
        return 0
    n = args.requests or (10 if args.smoke else 200)
    phases = args.repeats or (1 if args.smoke else 3)
    max_tokens = 16 if args.smoke else 256
    import requests

    server = BenchServer([SMOLLM], threads(args))
    try:
        depths: list[int] = []

        jupyter_status = server.base.rsplit("/universal", 1)[0] + "/api/status"
        ours_status = f"{server.base}/api/status"

        def get_ms(url: str):
            start = time.perf_counter()
            r = server.session.get(url, timeout=30)
            elapsed = (time.perf_counter() - start) * 1000
            r.raise_for_status()
            return elapsed, r

        def sample(busy: bool = False) -> dict[str, np.ndarray]:
            out: dict[str, list[float]] = {"jupyter": [], "universal": []}
            for _ in range(n):
                out["jupyter"].append(get_ms(jupyter_status)[0])
                time.sleep(0.0025)
                elapsed, r = get_ms(ours_status)
                out["universal"].append(elapsed)
                if busy:
                    depths.append(sum(m.get("queue_depth", 0) for m in r.json()["models"]))
                time.sleep(0.0025)
            return {k: np.array(v) for k, v in out.items()}

        def record(into: dict, s: dict[str, np.ndarray]) -> None:
            for route, values in s.items():
                into[route, 50].append(float(np.percentile(values, 50)))
                into[route, 99].append(float(np.percentile(values, 99)))

        sample()  # warm-up
        routes = {"jupyter": "/api/status", "universal": "/universal/api/status"}
        idle: dict = {(route, q): [] for route in routes for q in (50, 99)}
        busy: dict = {(route, q): [] for route in routes for q in (50, 99)}
        pieces = [0]
        for _ in range(phases):
            record(idle, sample())
            stop = threading.Event()

            def client(i: int) -> None:
                session = requests.Session()
                session.headers.update(server.session.headers)
                body = {"model": SMOLLM, "prompt": f"Write a long story, part {i}.", "max_tokens": max_tokens,
                        "temperature": 0.7, "seed": i}
                while not stop.is_set():
                    for _, piece in server.stream_completion(body, session):
                        pieces[0] += 1
                        if stop.is_set():
                            break

            workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.streams)]
            for w in workers:
                w.start()
            deadline = time.monotonic() + 120
            while pieces[0] == 0 and time.monotonic() < deadline:  # until the first stream produces tokens
                time.sleep(0.01)
            busy_sample = sample(busy=True)
            stop.set()
            for w in workers:
                w.join(timeout=120)
            record(busy, busy_sample)
        streams = f"{args.streams} streams"
        rows = []
        for route, path in routes.items():
            rows.append(Row(f"{path} p50", streams, busy[route, 50], "idle", idle[route, 50], "ms"))
            rows.append(Row(f"{path} p99", streams, busy[route, 99], "idle", idle[route, 99], "ms", "value<", 50))
        print_table(f"Jupyter status latency, idle vs {streams}", rows, [
            f"{n} requests per route per phase, {phases} phases of each; queue depth seen while busy: "
            f"median {int(np.median(depths))}, max {max(depths)}; "
            f"pieces streamed during busy phases: {pieces[0]}",
        ])
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
