"""The classify, rerank and NER backends: spaCy's real en_core_web_sm, and tiny random BERT folders."""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel.backends import choose_backend, create_backend
from universal_kernel.config import RuntimeConfig
from universal_kernel.errors import InvalidRequest, WrongTask
from universal_kernel.references import Resolver

SENTENCES = [
    "Barack Obama met Satya Nadella at Microsoft headquarters in Seattle.",
    "Angela Merkel flew from Berlin to Paris to speak with the United Nations.",
    "Apple opened a new office in London, said Tim Cook.",
]
WORDS = ("the a of to in and is was on at for with from by city river paris london berlin alice bob "
         "visited lives near said good bad fine very not").split()
MAX_POSITIONS = 64


# spaCy ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spacy_spec():
    return Resolver([]).resolve("en-core-web-sm")


@pytest.fixture(scope="module")
def spacy_backend(spacy_spec):
    backend = create_backend(spacy_spec, choose_backend(spacy_spec), RuntimeConfig(), {})
    yield backend
    backend.close()


def test_spacy_entities_carry_their_offsets(spacy_backend):
    entities, tokens = spacy_backend.ner(SENTENCES)
    labels = {e["label"] for ents in entities for e in ents}
    assert {"PERSON", "ORG", "GPE"} <= labels
    for text, ents in zip(SENTENCES, entities):
        assert ents
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"]
            assert e["score"] == 1.0
    assert tokens == sum(spacy_backend.count_tokens(t) for t in SENTENCES)


def test_spacy_entities_equal_the_full_pipeline(spacy_backend, spacy_spec):
    import spacy

    nlp = spacy.load(spacy_spec.path)
    expected = [[(e.label_, e.start_char, e.end_char) for e in doc.ents] for doc in nlp.pipe(SENTENCES)]
    entities, _ = spacy_backend.ner(SENTENCES)
    assert [[(e["label"], e["start"], e["end"]) for e in ents] for ents in entities] == expected
    # Only what NER needs was loaded (in en_core_web_sm the ner has its own tok2vec).
    assert spacy_backend.nlp.pipe_names == ["ner"]


def test_spacy_edge_cases(spacy_backend):
    assert spacy_backend.ner([""]) == ([[]], 0)
    assert spacy_backend.ner([]) == ([], 0)
    with pytest.raises(WrongTask, match="no text classifier"):
        spacy_backend.classify(["Some text."])


def test_spacy_over_long_text_needs_truncation(spacy_backend):
    limit = spacy_backend.nlp.max_length
    spacy_backend.nlp.max_length = 40
    try:
        long = SENTENCES[0] + " " + SENTENCES[1]
        with pytest.raises(InvalidRequest, match=r"input\[1\]") as caught:
            spacy_backend.ner(["short", long])
        assert caught.value.param == "input"
        entities, _ = spacy_backend.ner(["short", long], truncate=True)
        assert all(e["end"] <= 40 and long[e["start"]:e["end"]] == e["text"] for e in entities[1])
    finally:
        spacy_backend.nlp.max_length = limit


def test_spacy_text_classifier_keeps_the_tok2vec_it_listens_to(tmp_path):
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec")
    listener = {"@architectures": "spacy.Tok2VecListener.v1", "width": 96, "upstream": "*"}
    textcat = nlp.add_pipe("textcat", config={"model": {"@architectures": "spacy.TextCatCNN.v2",
                                                        "exclusive_classes": True, "nO": None,
                                                        "tok2vec": listener}})
    for label in ("sport", "politics", "tech"):
        textcat.add_label(label)
    nlp.add_pipe("sentencizer")
    nlp.initialize()
    nlp.to_disk(tmp_path / "textcat")
    spec = Resolver([tmp_path]).resolve(str(tmp_path / "textcat"))
    assert (spec.format, spec.task) == ("spacy", "classify")
    backend = create_backend(spec, choose_backend(spec), RuntimeConfig(), {})
    try:
        assert backend.nlp.pipe_names == ["tok2vec", "textcat"]
        results, tokens = backend.classify(["The match ended in a draw.", ""])
        assert tokens == 7
        for cats in results:
            assert set(cats) == {"sport", "politics", "tech"}
            assert abs(sum(cats.values()) - 1) < 1e-5
        with pytest.raises(WrongTask, match="no entity recognizer"):
            backend.ner(["Paris"])
    finally:
        backend.close()


def test_spacy_backend_choice(spacy_spec):
    assert choose_backend(spacy_spec, "spacy") == "spacy"
    for forced in ("transformers", "llama_cpp"):
        with pytest.raises(InvalidRequest) as caught:
            choose_backend(spacy_spec, forced)
        assert caught.value.param == "backend"


# Tiny transformers folders ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification,
                              BertTokenizerFast)

    root = tmp_path_factory.mktemp("tiny-classifiers")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), model_max_length=512)
    heads = {
        "classifier": (BertForSequenceClassification, {0: "neg", 1: "neu", 2: "pos"}),
        "cross-encoder": (BertForSequenceClassification, {0: "LABEL_0"}),
        "tagger": (BertForTokenClassification, dict(enumerate(["B-PER", "I-PER", "B-LOC", "I-LOC", "O"]))),
    }
    folders = {}
    for name, (model_class, id2label) in heads.items():
        torch.manual_seed(len(name))
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=MAX_POSITIONS, id2label=id2label,
                            label2id={v: k for k, v in id2label.items()})
        folder = root / name
        model_class(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return root, folders


@pytest.fixture(scope="module")
def tiny(tiny_folders):
    """name -> (spec, backend), each loaded once, in fp32 asked for: these tests compare with transformers'
    own fp32 numbers, and "auto" is bf16 on a bf16 CPU (tests/test_precision_encoders.py runs both)."""
    root, folders = tiny_folders
    resolver = Resolver([root])
    loaded = {}
    for name, folder in folders.items():
        spec = resolver.resolve(str(folder))
        loaded[name] = (spec, create_backend(spec, choose_backend(spec), RuntimeConfig(device="cpu"),
                                             {"precision": "fp32"}))
    yield loaded
    for _, backend in loaded.values():
        backend.close()


def sentence(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n)) + "."


def test_classifier_scores_its_labels_in_input_order(tiny):
    spec, backend = tiny["classifier"]
    assert spec.task == "classify"
    assert backend.max_input_tokens == MAX_POSITIONS
    texts = [sentence(2), sentence(50), "", sentence(9), sentence(2)]
    results, tokens = backend.classify(texts)
    assert tokens == sum(backend.count_tokens(t) for t in texts)
    for probs in results:
        assert set(probs) == {"neg", "neu", "pos"}
        assert abs(sum(probs.values()) - 1) < 1e-5
        assert list(probs.values()) == sorted(probs.values(), reverse=True)
    one_by_one = [backend.classify([t])[0][0] for t in texts]
    for batched, single in zip(results, one_by_one):
        labels = sorted(batched)
        assert np.allclose([batched[k] for k in labels], [single[k] for k in labels], atol=1e-5)
    with pytest.raises(WrongTask, match="not a cross-encoder"):
        backend.score_pairs("query", ["doc"])


def test_cross_encoder_scores_are_the_sigmoid_of_its_logit(tiny, tiny_folders):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec, backend = tiny["cross-encoder"]
    assert spec.task == "rerank"
    query = "paris city"
    documents = ["paris is a city on a river.", sentence(30), "bob", sentence(5)]
    scores, tokens = backend.score_pairs(query, documents)
    assert all(0 <= s <= 1 for s in scores)
    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    model = AutoModelForSequenceClassification.from_pretrained(spec.path).eval()
    with torch.inference_mode():
        expected = [torch.sigmoid(model(**tokenizer(query, doc, return_tensors="pt")).logits[0, 0]).item()
                    for doc in documents]
    assert np.allclose(scores, expected, atol=1e-5)
    assert tokens == sum(len(tokenizer(query, doc)["input_ids"]) for doc in documents)


def test_token_classifier_groups_entities_with_offsets(tiny):
    spec, backend = tiny["tagger"]
    assert spec.task == "ner"
    texts = ["alice visited paris and berlin with bob.", "", sentence(20)]
    entities, tokens = backend.ner(texts)
    assert entities[1] == []
    assert tokens > 0
    found = [e for ents in entities for e in ents]
    assert found  # random weights still tag some words with something other than O
    for text, ents in zip(texts, entities):
        for e in ents:
            assert text[e["start"]:e["end"]] == e["text"]
            assert e["label"] in ("PER", "LOC")
            assert 0 <= e["score"] <= 1


@pytest.mark.parametrize("name", ["classifier", "cross-encoder", "tagger"])
def test_long_inputs_need_truncation(tiny, name):
    _, backend = tiny[name]
    long = sentence(200)
    run = {"classifier": lambda **kw: backend.classify(["short", long], **kw),
           "cross-encoder": lambda **kw: backend.score_pairs("query", ["short", long], **kw),
           "tagger": lambda **kw: backend.ner(["short", long], **kw)}[name]
    with pytest.raises(InvalidRequest, match=rf"\[1\] has \d+ tokens; .* at most {MAX_POSITIONS}") as caught:
        run()
    assert caught.value.param == ("documents" if name == "cross-encoder" else "input")
    _, tokens = run(truncate=True)
    assert tokens <= 2 * MAX_POSITIONS


def test_spacy_backend_refuses_a_transformers_folder(tiny):
    spec, _ = tiny["classifier"]
    with pytest.raises(InvalidRequest) as caught:
        choose_backend(spec, "spacy")
    assert caught.value.param == "backend"


# The backend registry ---------------------------------------------------------------------------------
def test_every_backend_serves_registered_tasks_and_every_task_has_a_backend():
    from universal_kernel.backends.registry import BACKENDS
    from universal_kernel.tasks import TASKS

    for kind in BACKENDS.values():
        assert kind.tasks <= set(TASKS), (kind.name, kind.tasks - set(TASKS))
    for task, parts in TASKS.items():
        for model_format, model_kind in parts.models:
            loaders = [k.name for k in BACKENDS.values() if task in k.tasks
                       and any(model_format in ("*", f) and c in ("*", model_kind) for f, c in k.loads)]
            assert loaders, (task, model_format, model_kind)


def test_the_choice_follows_the_declarations(spacy_spec, tiny):
    from universal_kernel.backends.registry import BACKENDS

    resolver = Resolver([])
    specs = [resolver.resolve(name) for name in ("smollm2-135m-instruct", "all-minilm-l6-v2", "rapidocr")]
    for spec in [*specs, spacy_spec, *(spec for spec, _ in tiny.values())]:
        loaders = [kind for kind in BACKENDS.values() if kind.loads_spec(spec)]
        assert choose_backend(spec) == next(kind.name for kind in loaders if kind.auto)
        for kind in BACKENDS.values():
            if kind in loaders:
                assert choose_backend(spec, kind.name) == kind.name
                continue
            with pytest.raises(InvalidRequest) as caught:
                choose_backend(spec, kind.name)
            assert caught.value.param == "backend"
            assert (f"only the {loaders[0].name} backend serves it" if len(loaders) == 1
                    else f"the {kind.name} backend serves {kind.serves} only") in str(caught.value)
    with pytest.raises(InvalidRequest, match="unknown backend 'llama'; use one of auto, llama_cpp"):
        choose_backend(specs[0], "llama")


def test_a_declared_backend_serves_through_the_runtime(monkeypatch):
    """Adding a backend is one declaration: the runtime chooses it, imports its library before measuring
    the load, builds it, and reports what it declares."""
    from universal_kernel import Runtime
    from universal_kernel.backends import Backend
    from universal_kernel.backends import registry

    imported = []

    class CharacterCounts(Backend):
        """Embeds a text as its counts of a, b and c."""

        def embed(self, texts, normalize=True):
            vectors = np.asarray([[t.count(c) for c in "abc"] for t in texts], dtype=np.float32)
            return vectors, sum(map(len, texts))

        def count_tokens(self, text):
            return len(text)

        def close(self):
            pass

    toy = registry.BackendKind(
        "counts", frozenset({("transformers", "embed")}), frozenset({"embed"}), "embedding folders",
        create=lambda spec, config, options, threads: CharacterCounts(spec),
        library=lambda device: imported.append(device), auto=False,
        precision=lambda backend, spec: {"precision": "counts", "precision_reason": "declared"})
    monkeypatch.setitem(registry.BACKENDS, "counts", toy)
    rt = Runtime(RuntimeConfig(device="cpu", embedding_cache_folder=None), reaper=False)
    try:
        result = rt.embed(["abcab", "cc"], model="all-minilm-l6-v2", normalize=False, backend="counts")
        assert np.asarray(result.vectors).tolist() == [[2, 2, 1], [0, 0, 2]]
        assert imported == ["cpu"]
        (model,) = rt.status()["models"]
        assert (model["backend"], model["precision"], model["precision_reason"]) == ("counts", "counts", "declared")
        assert model["parallel"] == 1 and "prompt_reuse" not in model  # no batching declared
    finally:
        rt.close()
