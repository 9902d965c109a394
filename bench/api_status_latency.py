"""Jupyter server responsiveness: `/universal/api/status` latency idle vs while four streams run.

A real `jupyter server` with the extension and SmolLM2 preloaded. Phases alternate, idle, busy,
idle, busy...; each phase times `--requests` GETs of the status route and gives a p50 and a p99.
Busy means four clients each streaming completions from `/v1/completions` (the runtime runs them
one at a time; the others wait in its queue). The table shows the medians over phases.

    python bench/api_status_latency.py            # 200 requests per phase, 3 phases of each
    python bench/api_status_latency.py --smoke    # 10 requests, 1 phase of each
"""

from __future__ import annotations

import threading
import time

import numpy as np

from _common import SMOLLM, Row, parser, print_table, threads
from _server import BenchServer, server_ext_available


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="status requests per phase")
    p.add_argument("--streams", type=int, default=4)
    args = p.parse_args(argv)
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

        def sample(busy: bool = False) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter()
                r = server.session.get(f"{server.base}/api/status", timeout=30)
                out.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
                if busy:
                    depths.append(sum(m.get("queue_depth", 0) for m in r.json()["models"]))
                time.sleep(0.005)
            return out

        sample()  # warm-up
        idle50, idle99, busy50, busy99 = [], [], [], []
        pieces = [0]
        for _ in range(phases):
            s = np.array(sample())
            idle50.append(float(np.percentile(s, 50)))
            idle99.append(float(np.percentile(s, 99)))
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
            s = np.array(sample(busy=True))
            stop.set()
            for w in workers:
                w.join(timeout=120)
            busy50.append(float(np.percentile(s, 50)))
            busy99.append(float(np.percentile(s, 99)))
        rows = [
            Row("status p50", "4 streams", busy50, "idle", idle50, "ms"),
            Row("status p99", "4 streams", busy99, "idle", idle99, "ms", "value<", 50),
        ]
        print_table("Jupyter /universal/api/status latency, idle vs four streams", rows, [
            f"{n} requests per phase, {phases} phases of each; queue depth seen while busy: "
            f"median {int(np.median(depths))}, max {max(depths)}; "
            f"pieces streamed during busy phases: {pieces[0]}",
        ])
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
