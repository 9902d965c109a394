"""Precision per device for the classifier heads (classify, rerank's cross-encoders, NER): bf16 only
where the CPU has it or where asked, behind a probe against fp32 whose refusal keeps fp32.

The heads sit on a real encoder: all-MiniLM-L6-v2's weights (the suite's embedding model) with seeded
classifier layers on top, large enough (std 0.5) that the probabilities are far from uniform, so a
probe difference means something. Each model loads once per precision. The reference is fp32 asked for,
never "auto" (which is bf16 on a bf16 CPU); "auto" runs as both kinds of CPU on every machine, through
the capability seam (universal_kernel/machine.py)."""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.backends import choose_backend, create_backend
from universal_kernel.backends.transformers_classify import TransformersTokenClassifier
from universal_kernel.devices import pick_device
from universal_kernel.machine import cpu_acts_as
from universal_kernel.references import Resolver

SENTENCES = [
    "Barack Obama met Satya Nadella at Microsoft headquarters in Seattle.",
    "Angela Merkel flew from Berlin to Paris to speak with the United Nations.",
    "The film was long, but the ending made up for it.",
    "Rain is expected all week in the north of the country.",
]
QUERY = "Who visited Seattle?"
HEADS = {
    "classifier": ("BertForSequenceClassification", {0: "neg", 1: "neu", 2: "pos"}),
    "cross-encoder": ("BertForSequenceClassification", {0: "LABEL_0"}),
    "tagger": ("BertForTokenClassification", dict(enumerate(["B-PER", "I-PER", "B-LOC", "I-LOC", "O"]))),
}


@pytest.fixture(scope="module")
def folders(minilm_path, tmp_path_factory):
    import torch
    import transformers

    root = tmp_path_factory.mktemp("minilm-heads")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path)
    out = {}
    for name, (class_name, id2label) in HEADS.items():
        torch.manual_seed(13)
        model = getattr(transformers, class_name).from_pretrained(
            minilm_path, id2label=id2label, label2id={v: k for k, v in id2label.items()})
        with torch.no_grad():
            model.classifier.weight.normal_(0, 0.5)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        out[name] = root / name
    return root, out


@pytest.fixture(scope="module")
def specs(folders):
    root, paths = folders
    resolver = Resolver([root])
    return {name: resolver.resolve(str(path)) for name, path in paths.items()}


def _load(spec, precision: str | None):
    options = {"precision": precision} if precision else {}
    return create_backend(spec, choose_backend(spec), RuntimeConfig(device="cpu"), options)


@pytest.fixture(scope="module")
def fp32_heads(specs):
    """The heads in fp32, asked for: the reference every other precision is compared with."""
    loaded = {name: _load(spec, "fp32") for name, spec in specs.items()}
    yield loaded
    for backend in loaded.values():
        backend.close()


@pytest.fixture(scope="module", params=["bf16-cpu", "no-bf16-cpu"])
def auto(specs, request):
    """The heads as the runtime loads them by default (config precision "auto"), on a CPU that acts as
    one with AVX512_BF16/AMX and as one without: both branches run on every machine."""
    with cpu_acts_as(bf16=request.param == "bf16-cpu"):
        loaded = {name: _load(spec, None) for name, spec in specs.items()}
    yield request.param, loaded
    for backend in loaded.values():
        backend.close()


@pytest.fixture(scope="module")
def forced_bf16(specs):
    """bf16 asked for on any CPU: the sequence heads with the default tolerance (0.01, through the same
    load options as the runtime's), the tagger with a lenient one (its random per-token probabilities
    move up to about 0.03 under bf16)."""
    loaded = {name: _load(specs[name], "bf16") for name in ("classifier", "cross-encoder")}
    loaded["tagger"] = TransformersTokenClassifier(specs["tagger"], device=pick_device("cpu"), threads=2,
                                                   precision="bf16", max_probe_error=0.1)
    yield loaded
    for backend in loaded.values():
        backend.close()


def run(name: str, backend):
    if name == "classifier":
        rows, _ = backend.classify(SENTENCES)
        return np.array([[row[k] for k in ("neg", "neu", "pos")] for row in rows])
    if name == "cross-encoder":
        return np.array(backend.score_pairs(QUERY, SENTENCES)[0])
    return backend.ner(SENTENCES)[0]


def test_auto_follows_the_cpu(auto, specs, fp32_heads):
    cpu, loaded = auto
    assert {spec.task for spec in specs.values()} == {"classify", "rerank", "ner"}
    for name, backend in loaded.items():
        precision = backend.precision
        if cpu == "no-bf16-cpu":  # fp32, no probe run, and the reason says the CPU lacks bf16
            assert precision.name == "fp32" and not precision.autocast
            assert precision.reason == "the CPU has no AVX512_BF16 or AMX"
        else:  # bf16 tried, and the probe decided: kept within its tolerance, or refused for fp32
            assert precision.reason.startswith("the CPU has AVX512_BF16/AMX")
            assert (precision.name == "bf16" and precision.autocast and "; probe: every" in precision.reason) or (
                precision.name == "fp32" and not precision.autocast and "the probe refused bf16" in precision.reason
            ), precision
        if precision.name == "fp32":  # the same numbers as fp32 asked for
            if name == "tagger":
                assert run(name, backend) == run(name, fp32_heads[name])
            else:
                assert np.allclose(run(name, backend), run(name, fp32_heads[name]), atol=1e-6)
        elif name != "tagger":  # bf16: within the probe's default tolerance of fp32, and really bf16
            assert not np.array_equal(run(name, backend), run(name, fp32_heads[name]))
            assert np.abs(run(name, backend) - run(name, fp32_heads[name])).max() <= 0.01 + 1e-6


def test_the_probes_refusal_keeps_fp32(specs, fp32_heads):
    device = pick_device("cpu")
    for name, spec in specs.items():
        kind = type(fp32_heads[name])
        # bf16 must match fp32 exactly: no bf16 run can, so the probe refuses and the model stays fp32
        refused = kind(spec, device=device, threads=2, precision="bf16", max_probe_error=0.0)
        try:
            assert refused.precision.name == "fp32" and not refused.precision.autocast
            assert refused.precision.reason.startswith("bf16 asked for, but the probe refused bf16: a ")
            assert "from fp32 (> 0)" in refused.precision.reason
            if name == "tagger":
                assert run(name, refused) == run(name, fp32_heads[name])
            else:
                assert np.allclose(run(name, refused), run(name, fp32_heads[name]), atol=1e-6)
        finally:
            refused.close()


def test_bf16_behind_a_lenient_probe_stays_close_to_fp32(forced_bf16, fp32_heads):
    for name, backend in forced_bf16.items():
        assert backend.precision.name == "bf16" and backend.precision.autocast, backend.precision
        assert "bf16 asked for; probe: every" in backend.precision.reason
    for name in ("classifier", "cross-encoder"):
        fp32, bf16 = run(name, fp32_heads[name]), run(name, forced_bf16[name])
        assert not np.array_equal(fp32, bf16)  # it really ran in bf16
        assert np.abs(fp32 - bf16).max() <= 0.01
    fp32, bf16 = run("classifier", fp32_heads["classifier"]), run("classifier", forced_bf16["classifier"])
    decided = np.sort(fp32, axis=1)[:, -1] - np.sort(fp32, axis=1)[:, -2] > 0.02
    assert (fp32.argmax(axis=1) == bf16.argmax(axis=1))[decided].all()
    fp32_scores, bf16_scores = run("cross-encoder", fp32_heads["cross-encoder"]), run("cross-encoder", forced_bf16["cross-encoder"])
    # documents whose fp32 scores are more than 0.02 apart keep their order (nearer ones are ties)
    for i in range(len(SENTENCES)):
        for j in range(len(SENTENCES)):
            if fp32_scores[i] - fp32_scores[j] > 0.02:
                assert bf16_scores[i] > bf16_scores[j], (fp32_scores, bf16_scores)
    # NER: the entities (text, label, offsets) agree but where a random head's labels were near ties
    # (the lenient probe allows 0.1), and the shared ones score close; the pipeline ran under autocast
    fp32_entities = {(i, e["text"], e["label"], e["start"], e["end"]): e["score"]
                     for i, row in enumerate(run("tagger", fp32_heads["tagger"])) for e in row}
    bf16_entities = {(i, e["text"], e["label"], e["start"], e["end"]): e["score"]
                     for i, row in enumerate(run("tagger", forced_bf16["tagger"])) for e in row}
    shared = fp32_entities.keys() & bf16_entities.keys()
    assert len(fp32_entities) >= 10 and len(shared) >= 0.9 * len(fp32_entities), (fp32_entities, bf16_entities)
    gaps = [abs(fp32_entities[k] - bf16_entities[k]) for k in shared]
    assert max(gaps) <= 0.05 and max(gaps) > 0


@pytest.mark.parametrize("cpu", ["bf16-cpu", "no-bf16-cpu"])
def test_the_runtime_status_says_which_precision_and_why(folders, cpu):
    root, paths = folders
    with cpu_acts_as(bf16=cpu == "bf16-cpu"):
        runtime = Runtime(RuntimeConfig(model_folders=[root], embedding_cache_folder=None, device="cpu"))
        try:
            result = runtime.classify(SENTENCES[:2], str(paths["classifier"]))
            assert len(result.rows) == 2
            model = next(m for m in runtime.status()["models"] if m["task"] == "classify")
            if cpu == "no-bf16-cpu":
                assert model["precision"] == "fp32" and model["precision_reason"] == "the CPU has no AVX512_BF16 or AMX"
            else:
                assert model["precision"] in ("bf16", "fp32") and "probe" in model["precision_reason"]
                assert model["precision_reason"].startswith("the CPU has AVX512_BF16/AMX")
        finally:
            runtime.close()
