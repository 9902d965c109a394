"""Pulling by Hub id: `hub_pull.pull` vs `huggingface_hub.hf_hub_download` of the same file, and the progress cost.

Both sides fetch the SmolLM2 GGUF (about 94 MB) from the tests' local Hub-compatible server on a loopback
port (tests/hub_server.py; the Hub itself cannot be reached here) into a fresh HF cache each run. Ours adds
the repo's metadata, the file choice, the disk check and the sha256 of the file; the peer is the bare
download. The progress cost: ours with the text progress display against ours without a callback.

    python bench/pull.py              # 5 runs per side
    python bench/pull.py --smoke      # 1 run, the MiniLM tokenizer files only
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time

from _common import ROOT, Row, interleaved, parser, print_cpu, print_table

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_K_M.gguf"


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    print_cpu()
    repeats = 1 if args.smoke else (args.repeats or 5)
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.hub_server import LocalHub, standard_repos

    hub = LocalHub()
    standard_repos(hub.state)
    if args.smoke:  # a small file: the tokenizer of MiniLM, as a GGUF-free repo of one file
        tokenizer = next(f for f in hub.state.repos["sentence-transformers/all-MiniLM-L6-v2"].files.values()
                         if f.name == "tokenizer.json")
        hub.state.add("test-org/smoke-GGUF", {"m-Q4_K_M.gguf": tokenizer.source})
    repo, name = ("test-org/smoke-GGUF", "m-Q4_K_M.gguf") if args.smoke else (REPO, FILE)
    hub.start()
    os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    import huggingface_hub.constants as hf_constants

    hf_constants.HF_HUB_OFFLINE = False
    from huggingface_hub import hf_hub_download

    from universal_kernel.hub_pull import pull
    from universal_kernel.hub_progress import PullDisplay

    size = hub.state.repos[repo].files[name].size

    def fresh(fn):
        folder = tempfile.mkdtemp(prefix="uk-pull-bench-")
        os.environ["HF_HUB_CACHE"] = folder
        try:
            start = time.perf_counter()
            fn(folder)
            return size / (time.perf_counter() - start) / 1e6
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    sides = {
        "ours": lambda: fresh(lambda folder: pull(f"{repo}:Q4_K_M")),
        "peer": lambda: fresh(lambda folder: hf_hub_download(repo, name, cache_dir=folder, endpoint=hub.endpoint)),
        "ours+progress": lambda: fresh(lambda folder: pull(f"{repo}:Q4_K_M", progress=PullDisplay(
            widgets=False, out=io.StringIO()))),
    }
    results = interleaved(sides, repeats, warmup=not args.smoke)
    hub.stop()
    rows = [
        Row("pull MB/s (file + metadata + sha256)", "hub_pull.pull", results["ours"], "hf_hub_download",
            results["peer"], "MB/s", "ratio>=", 0.95),
        Row("progress display cost", "pull + text progress", results["ours+progress"], "pull, no callback",
            results["ours"], "MB/s", "ratio>=", 0.98),
    ]
    print_table(f"Pull of {name} ({size / 1e6:.1f} MB) from a local Hub-compatible server", rows,
                notes=["loopback: no network latency; the sha256 of the file is ours alone"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
