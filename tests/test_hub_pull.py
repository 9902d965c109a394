"""Models by their Hub id, against a local Hub-compatible server with the real `huggingface_hub` client.

The Hub cannot be reached here: tests/hub_server.py serves the real SmolLM2 GGUF (under several quant names)
and the real MiniLM folder (with ONNX / .bin decoys) with the Hub's shapes, pointed at by HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MINILM, SMOLLM
from tests.hub_server import TOKEN, local_hub
from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.errors import (
    DiskFull, GatedModel, HubUnavailable, ModelNotFound, ModelTooLarge, ReferenceRefused, RepoNotFound,
)
from universal_kernel.hub_pull import PullFailed, find_pulled, pull, remove
from universal_kernel.hub_refs import HubRef, parse_hub_ref, select_files
from universal_kernel.references import Resolver

GGUF_REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
ST_REPO = "sentence-transformers/all-MiniLM-L6-v2"
DECOYS = ("onnx/model.onnx", "pytorch_model.bin", "openvino/openvino_model.bin")


hub = pytest.fixture(scope="module")(local_hub)


@pytest.fixture(scope="module")
def shared_cache(hub, tmp_path_factory):
    """The module's HF cache, where the GGUF and MiniLM are pulled once."""
    return tmp_path_factory.mktemp("hf-shared")


@pytest.fixture
def cache(hub, monkeypatch, shared_cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(shared_cache))
    return shared_cache


@pytest.fixture
def fresh_cache(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    hub.state.log.clear()
    yield tmp_path / "hub"
    hub.state.delay_s = 0.0
    hub.state.gate = None
    hub.state.drop_after.clear()
    hub.state.corrupt.clear()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- the parser -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("org/repo", HubRef("org/repo")),
    ("org/repo:q4_k_m", HubRef("org/repo", quant="q4_k_m")),
    ("org/repo@v1.0:Q8_0", HubRef("org/repo", quant="Q8_0", revision="v1.0")),
    ("org/repo/sub/model-Q4_K_M.gguf", HubRef("org/repo", filename="sub/model-Q4_K_M.gguf")),
    ("hf.co/org/Repo-GGUF:Q4_K_M", HubRef("org/Repo-GGUF", quant="Q4_K_M")),
    ("https://huggingface.co/org/repo", HubRef("org/repo")),
    ("https://huggingface.co/org/repo/blob/abc123/m-Q8_0.gguf", HubRef("org/repo", filename="m-Q8_0.gguf",
                                                                      revision="abc123")),
    ("org/repo@main", HubRef("org/repo", revision="main")),
    ("models/folder", HubRef("models/folder")),  # a hub id's shape; the resolver tries the model folders first
    ("org/repo/folder", None), ("models/missing.gguf", None), ("plain-name", None), ("./org/repo", None), ("https://example.com/a/b", None),
])
def test_references_parse(text, expected):
    assert parse_hub_ref(text) == expected


def test_selection_picks_one_quant_or_lists_them():
    names = ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "big-Q6_K-00001-of-00002.gguf",
             "big-Q6_K-00002-of-00002.gguf", "mmproj-F16.gguf"]
    assert select_files(HubRef("o/r"), names).files == ("m-Q4_K_M.gguf",)
    assert select_files(HubRef("o/r", quant="q8_0"), names).files == ("m-Q8_0.gguf",)
    split = select_files(HubRef("o/r", quant="Q6_K"), names)
    assert split.files == ("big-Q6_K-00001-of-00002.gguf", "big-Q6_K-00002-of-00002.gguf")
    assert split.main == "big-Q6_K-00001-of-00002.gguf"
    assert select_files(HubRef("o/r", filename="big-Q6_K-00002-of-00002.gguf"), names).files == split.files
    with pytest.raises(ReferenceRefused, match=r"no GGUF with quant Q5_K_M in o/r; quants: Q4_K_M, Q6_K, Q8_0"):
        select_files(HubRef("o/r", quant="Q5_K_M"), names)
    with pytest.raises(ReferenceRefused, match=r"quant Q8_0 is ambiguous in o/r; quants: Q8_0"):
        select_files(HubRef("o/r", quant="Q8_0"), ["a-Q8_0.gguf", "b-Q8_0.gguf"])


def test_selection_of_a_transformers_repo_takes_only_what_loads():
    names = ["config.json", "tokenizer.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "pytorch_model.bin", "onnx/model.onnx", "tf_model.h5",
             "flax_model.msgpack", "1_Pooling/config.json", "modules.json", "generation_config.json"]
    files = set(select_files(HubRef("o/r"), names, {"architectures": ["LlamaForCausalLM"]}).files)
    assert files == {"config.json", "tokenizer.json", "model.safetensors.index.json", "1_Pooling/config.json",
                     "modules.json", "generation_config.json"}  # the shards come from the index, read first
    with pytest.raises(ReferenceRefused, match="trust_remote_code"):
        select_files(HubRef("o/r"), names, {"auto_map": {"AutoModel": "x.Y"}})
    with pytest.raises(ReferenceRefused, match="only pickled .bin"):
        select_files(HubRef("o/r"), ["config.json", "pytorch_model.bin"], {})
    assert "pytorch_model.bin" in select_files(HubRef("o/r"), ["config.json", "pytorch_model.bin"], {},
                                               allow_pickle=True).files


# -- pulls ------------------------------------------------------------------------------------------------

def test_pull_by_quant_fetches_that_file_alone_verified_with_progress(hub, cache, smollm_path):
    hub.state.log.clear()
    reports = []
    rt = Runtime(RuntimeConfig(), reaper=False)
    try:
        result = rt.pull(f"hf.co/{GGUF_REPO}:q8_0", progress=lambda p: reports.append(
            (p.status, p.file, p.file_index, p.file_count, p.completed, p.total, p.digest)))
    finally:
        rt.close()
    assert result.path.name == "SmolLM2-135M-Instruct-Q8_0.gguf" and result.quant == "Q8_0"
    assert result.path.is_relative_to(cache) and _sha256(result.path) == _sha256(smollm_path)
    fetched = {e["file"] for e in hub.state.log if e["method"] == "GET"}
    assert fetched == {"SmolLM2-135M-Instruct-Q8_0.gguf"}
    size = smollm_path.stat().st_size
    assert reports[-1][0] == "success" and reports[-1][4] == reports[-1][5] == size
    downloading = [r for r in reports if r[0] == "downloading SmolLM2-135M-Instruct-Q8_0.gguf"]
    assert downloading and all(r[2:4] == (1, 1) for r in downloading)
    assert downloading[0][6] == "sha256:" + _sha256(smollm_path)
    assert [r[4] for r in downloading] == sorted(r[4] for r in downloading)
    # pulled once: a second pull is served from the cache, and so is the resolver without the network
    hub.state.log.clear()
    assert pull(f"{GGUF_REPO}:Q8_0").path == result.path
    assert not [e for e in hub.state.log if e["method"] == "GET"]
    assert find_pulled(f"{GGUF_REPO}:Q8_0").path == result.path


def test_first_generate_by_hub_id_pulls_the_default_quant(hub, cache, runtime):
    rt = Runtime(RuntimeConfig(allow_downloads=True, keep_alive=-1), reaper=False)
    try:
        params = {"max_tokens": 8, "temperature": 0}
        completion = rt.generate(GGUF_REPO, prompt="The capital of France is", params=params)
        assert completion.model == GGUF_REPO
        assert rt.resolve(GGUF_REPO).path.name == "SmolLM2-135M-Instruct-Q4_K_M.gguf"
        (loaded,) = rt.status()["models"]
        assert loaded["source"] == f"hub:{GGUF_REPO}@{hub.state.repos[GGUF_REPO].sha}"
    finally:
        rt.close()
    reference = runtime.generate(SMOLLM, prompt="The capital of France is", params=params)
    assert completion.text == reference.text and completion.completion_tokens > 0


def test_a_sentence_transformers_repo_pulls_safetensors_and_configs_only(hub, cache, runtime):
    hub.state.log.clear()
    result = pull(ST_REPO)
    fetched = {e["file"] for e in hub.state.log if e["method"] == "GET"}
    assert {"model.safetensors", "config.json", "modules.json", "1_Pooling/config.json", "tokenizer.json"} <= fetched
    assert not fetched & set(DECOYS) and "README.md" not in fetched
    assert result.kind == "transformers" and result.path.is_dir()
    rt = Runtime(RuntimeConfig(precision="fp32"), reaper=False)
    try:
        vectors = rt.embed(["a pulled encoder", "second row"], model=ST_REPO).vectors
    finally:
        rt.close()
    reference = runtime.embed(["a pulled encoder", "second row"], model=MINILM).vectors
    assert np.allclose(vectors, reference, atol=1e-5)


def test_refusals_are_one_line_and_fetch_nothing(hub, fresh_cache):
    cases = [
        ("test-org/no-default-GGUF", r"no default quant Q4_K_M in test-org/no-default-GGUF; quants: Q5_K_M, Q8_0"),
        (f"{GGUF_REPO}:Q2_K", r"no GGUF with quant Q2_K .*quants: Q4_K_M, Q4_K_S, Q8_0"),
        ("test-org/gated-GGUF:Q4_K_M", r"gated or private: a token with access is needed \(set HF_TOKEN"),
        ("test-org/nothing-here", r"no repo test-org/nothing-here on http://127\.0\.0\.1"),
        (f"{GGUF_REPO}@v9", r"has no revision 'v9'"),
        ("test-org/unsafe-names:Q4_K_M", r"would leave the cache \('\.\./\.\./escape\.gguf'\)"),
        ("test-org/remote-code", r"needs trust_remote_code"),
        ("test-org/pickle-only", r"only pickled \.bin weights"),
    ]
    for ref, message in cases:
        with pytest.raises((PullFailed, ReferenceRefused), match=message) as info:
            pull(ref)
        assert "\n" not in str(info.value), ref
    assert not [e for e in hub.state.log if e["method"] == "GET" and e["file"].endswith((".gguf", ".safetensors",
                                                                                         ".bin", ".py"))]
    assert not list(fresh_cache.rglob("*.gguf"))


def _sent(exc) -> tuple[int, str]:
    from universal_kernel.server_ext.errors import failure_from

    sent = failure_from(exc)
    return sent.status, sent.body.error.code


def test_each_failure_says_what_failed_with_its_own_error(hub, fresh_cache, monkeypatch, smollm_path):
    """Gated, unknown, unreachable, no room, over budget and anything else: each its typed error, one line, and
    the HTTP status and code the server sends for it."""
    def failed(ref, kind, message, status, code, **options):
        with pytest.raises(kind, match=message) as info:
            pull(ref, **options)
        assert "\n" not in str(info.value) and _sent(info.value) == (status, code), (ref, info.value)
        return info.value

    failed("test-org/gated-GGUF", GatedModel, r"gated or private: a token with access is needed \(set HF_TOKEN.*"
           r"accepting the model's terms", 403, "gated_model")
    monkeypatch.setenv("HF_TOKEN", "hf_a_token_without_access")  # the Hub's 403 GatedRepo
    failed("test-org/gated-GGUF", GatedModel, r"the Hub refused the token in HF_TOKEN \(HTTP 403\): accept the "
           r"model's terms", 403, "gated_model")
    monkeypatch.delenv("HF_TOKEN")
    gone = failed("test-org/nothing-here", RepoNotFound, r"no repo test-org/nothing-here", 404, "model_not_found")
    assert isinstance(gone, ModelNotFound)
    failed(f"{GGUF_REPO}@v9", RepoNotFound, r"has no revision 'v9'", 404, "model_not_found")
    hub.state.unavailable = 503
    try:
        failed(f"{GGUF_REPO}:Q8_0", HubUnavailable, rf"not in the Hugging Face cache \({fresh_cache}\) and "
               rf"{hub.endpoint} answered HTTP 503 \(check HF_ENDPOINT", 503, "hub_unavailable")
    finally:
        hub.state.unavailable = None
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    failed(f"{GGUF_REPO}:Q8_0", HubUnavailable, r"cannot reach http://127\.0\.0\.1:9 \(check HF_ENDPOINT",
           503, "hub_unavailable")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failed(f"{GGUF_REPO}:Q8_0", HubUnavailable, r"HF_HUB_OFFLINE is set", 503, "hub_unavailable")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    size = smollm_path.stat().st_size
    full = failed(f"{GGUF_REPO}:Q4_K_M", DiskFull, rf"\({size + (1 << 60):,} bytes needed, [\d,]+ free\)", 507,
                  "insufficient_storage", disk_margin=1 << 60)
    assert full.needed_bytes == size + (1 << 60) and 0 < full.free_bytes < full.needed_bytes
    failed(f"{GGUF_REPO}:Q4_K_M", ModelTooLarge, rf"\({size:,} bytes needed, 50,000,000 allowed\)", 413,
           "model_too_large", max_bytes=50_000_000)
    hub.state.corrupt.add("SmolLM2-135M-Instruct-Q4_K_M.gguf")  # anything else: the pull's own message, a 500
    other = failed(f"{GGUF_REPO}:Q4_K_M", PullFailed, r"has sha256", 500, "pull_failed")
    assert type(other) is PullFailed


def test_a_gated_repo_pulls_with_hf_token(hub, fresh_cache, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert pull("test-org/gated-GGUF").path.name == "m-Q4_K_M.gguf"


def test_a_dropped_connection_resumes_from_the_partial_file(hub, fresh_cache, smollm_path):
    size = smollm_path.stat().st_size
    hub.state.drop_after["SmolLM2-135M-Instruct-Q4_K_M.gguf"] = 40_000_000
    result = pull(f"{GGUF_REPO}:Q4_K_M")
    gets = hub.state.served("SmolLM2-135M-Instruct-Q4_K_M.gguf")
    assert len(gets) == 2 and gets[0]["bytes"] == 40_000_000
    assert gets[1]["range"] and gets[1]["range"].startswith("bytes=") and gets[1]["range"] != "bytes=0-"
    assert hub.state.bytes_served("SmolLM2-135M-Instruct-Q4_K_M.gguf") < 1.2 * size  # about one file, not two
    assert _sha256(result.path) == _sha256(smollm_path)


def test_a_wrong_sha256_deletes_the_file_and_names_both_digests(hub, fresh_cache, smollm_path):
    hub.state.corrupt.add("SmolLM2-135M-Instruct-Q4_K_M.gguf")
    good = _sha256(smollm_path)
    with pytest.raises(PullFailed, match=rf"SmolLM2-135M-Instruct-Q4_K_M\.gguf has sha256 [0-9a-f]{{64}}, the Hub "
                                         rf"says {good}; the file was deleted"):
        pull(f"{GGUF_REPO}:Q4_K_M")
    assert not [p for p in fresh_cache.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    assert find_pulled(f"{GGUF_REPO}:Q4_K_M") is None
    with pytest.raises(ModelNotFound, match="downloads are off"):
        Resolver([]).resolve(f"{GGUF_REPO}:Q4_K_M")  # nothing half-verified is ever loaded


def test_offline_names_the_cache_folder_and_the_ref(hub, fresh_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PullFailed, match=rf"{GGUF_REPO}:Q8_0 is not in the Hugging Face cache "
                                         rf"\({fresh_cache}\) and HF_HUB_OFFLINE is set"):
        pull(f"{GGUF_REPO}:Q8_0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network
    with pytest.raises(PullFailed, match=rf"not in the Hugging Face cache \({fresh_cache}\) and cannot reach"):
        pull(f"{GGUF_REPO}:Q8_0")


def test_a_cancel_keeps_the_runtime_usable_and_no_half_file(hub, fresh_cache, smollm_path):
    hub.state.delay_s = 0.02  # about 10 MB/s
    started = threading.Event()

    def progress(p):
        if p.file_completed > 0:
            started.set()

    timer = threading.Thread(target=lambda: started.wait(60) and os.kill(os.getpid(), signal.SIGINT), daemon=True)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        pull(f"{GGUF_REPO}:Q4_K_M", progress=progress)
    timer.join(10)
    assert find_pulled(f"{GGUF_REPO}:Q4_K_M") is None
    assert not [p for p in fresh_cache.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
    hub.state.delay_s = 0.0
    assert _sha256(pull(f"{GGUF_REPO}:Q4_K_M").path) == _sha256(smollm_path)


def test_two_processes_pulling_at_once_fetch_the_file_once(hub, fresh_cache, smollm_path):
    """The first process's download is held at the hub until the second has said it waits for it."""
    import threading

    from .conftest import wait_for

    hub.state.gate, hub.state.body_started = threading.Event(), threading.Event()
    code = (f"from universal_kernel.hub_pull import pull; r = pull('{GGUF_REPO}:Q4_K_M', progress=lambda p: "
            f"p.status.startswith('waiting') and print(p.status, flush=True)); print(r.path)")
    env = dict(os.environ, HF_HUB_CACHE=str(fresh_cache))

    def start():
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = start()
    try:
        assert hub.state.body_started.wait(300), "the first pull never reached the file's body"
        second = start()
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(second.stdout), daemon=True)
        reader.start()
        wait_for(lambda: any("waiting for another download" in line for line in lines) or second.poll() is not None,
                 300, "the second pull to say it waits")
    finally:
        hub.state.gate.set()
    outs = [first.communicate(timeout=300), (None, second.communicate(timeout=300)[1])]
    reader.join(60)
    assert first.returncode == 0 and second.returncode == 0, [o[1][-500:] for o in outs]
    paths = [outs[0][0].strip().splitlines()[-1], lines[-1].strip()]
    assert paths[0] == paths[1]
    assert "waiting for another download of SmolLM2-135M-Instruct-Q4_K_M.gguf" in "".join(lines)
    assert "waiting" not in outs[0][0]  # the first one fetched it
    assert hub.state.bytes_served("SmolLM2-135M-Instruct-Q4_K_M.gguf") == smollm_path.stat().st_size
    assert _sha256(paths[0]) == _sha256(smollm_path)


def test_no_room_on_disk_is_refused_before_any_byte(hub, fresh_cache):
    with pytest.raises(PullFailed, match=r"needs 0\.09 GiB plus .* GiB spare, and .* has .* GiB free"):
        pull(f"{GGUF_REPO}:Q4_K_M", disk_margin=1 << 60)
    assert not hub.state.served("SmolLM2-135M-Instruct-Q4_K_M.gguf")


def test_a_full_disk_during_the_download_leaves_no_file(hub, fresh_cache):
    """A file-size limit in a subprocess stands for a disk that fills up mid-file."""
    code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000_000, 20_000_000)); "
            "from universal_kernel.hub_pull import pull\n"
            "try:\n pull('" + GGUF_REPO + ":Q4_K_M')\nexcept Exception as e:\n print('ERR', e, type(e).__name__)")
    env = dict(os.environ, HF_HUB_CACHE=str(fresh_cache))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.startswith("ERR ") and "File too large" in out.stdout and out.stdout.count("\n") == 1, out
    # the write that found no room is a DiskFull naming the file and its size (a real EFBIG, as ENOSPC would be)
    assert out.stdout.rstrip().endswith(" DiskFull"), out
    assert "no room to write SmolLM2-135M-Instruct-Q4_K_M.gguf (" in out.stdout and "bytes free" in out.stdout
    assert find_pulled(f"{GGUF_REPO}:Q4_K_M") is None
    assert not [p for p in fresh_cache.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]


def test_rm_removes_a_pulled_model_through_the_cache_api(hub, fresh_cache):
    result = pull(f"{GGUF_REPO}:Q8_0")
    assert result.path.exists()
    assert remove(f"{GGUF_REPO}") == [result.revision]
    assert not result.path.exists() and find_pulled(f"{GGUF_REPO}:Q8_0") is None
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache"):
        remove(GGUF_REPO)


def test_weights_over_the_memory_budget_are_refused_before_any_byte(hub, fresh_cache):
    rt = Runtime(RuntimeConfig(memory_budget=50_000_000, allow_downloads=True), reaper=False)
    try:
        with pytest.raises(PullFailed, match=r"its weights take 0\.09 GiB, more than the memory budget of 0\.05 GiB"):
            rt.pull(f"{GGUF_REPO}:Q8_0")
        with pytest.raises(PullFailed, match="more than the memory budget"):
            rt.resolve(f"{GGUF_REPO}:Q8_0")  # pull on first use: the same refusal
    finally:
        rt.close()
    assert not hub.state.served("SmolLM2-135M-Instruct-Q8_0.gguf")


def test_the_text_progress_outside_a_widget_frontend(hub, fresh_cache):
    import io

    from universal_kernel.hub_progress import PullDisplay

    out = io.StringIO()
    display = PullDisplay(widgets=False, out=out)
    pull(ST_REPO, progress=display)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{ST_REPO}: pulling manifest"
    files = [line for line in lines if " file " in line]
    count = int(files[0].split(" file ")[1].split("/")[1].split()[0])
    assert count >= 8 and any(f" file {count}/{count} " in line for line in files)
    assert any(line.startswith(f"{ST_REPO}: file {count}/{count} model.safetensors ") and "B/s" in line
               for line in files)
    assert lines.count(f"{ST_REPO}: pulling manifest") == 1
    assert lines[-1].startswith(f"{ST_REPO}: ") and lines[-1].endswith("MB pulled")


def test_pulled_models_are_listed_with_repo_quant_and_revision(hub, fresh_cache):
    rt = Runtime(RuntimeConfig(), reaper=False)
    try:
        assert not [m for m in rt.models() if "hub" in m]
        gguf = rt.pull(f"{GGUF_REPO}:Q8_0")
        st = rt.pull(ST_REPO)
        listed = {m["id"]: m for m in rt.models() if "hub" in m}
    finally:
        rt.close()
    assert set(listed) == {f"{GGUF_REPO}:Q8_0", ST_REPO}
    assert listed[f"{GGUF_REPO}:Q8_0"]["hub"] == {"repo": GGUF_REPO, "quant": "Q8_0", "revision": gguf.revision}
    assert listed[f"{GGUF_REPO}:Q8_0"]["size_bytes"] == gguf.size_bytes
    assert listed[ST_REPO]["hub"]["revision"] == st.revision and listed[ST_REPO]["task"] == "embed"
