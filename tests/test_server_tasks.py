"""rerank, classify and NER over HTTP (`universal/v1/rerank|classify|ner`) on the session's real
`jupyter server` (tests/conftest.py), checked against the local runtime on the same machine: the
wire shapes of SPEC §7, the client runtime (`RemoteRuntime`, server mode), errors, and `tasks` in
the model list.
"""

from __future__ import annotations

import numpy as np
import pytest

from universal_kernel import WrongTask
from universal_kernel.client import RemoteRuntime

from .conftest import FRANCE, MINILM, SMOLLM, TOKEN

SPACY = "en-core-web-sm"
DOCUMENTS = [
    "Bananas are a good source of potassium.",
    "Paris is the capital and largest city of France.",
    "The Python language was created by Guido van Rossum.",
    "France's capital hosts the Louvre museum.",
]
TOPICS = ["sports", "cooking"]
TEXTS = ["The football team won the match.", "I baked a chocolate cake for dessert."]
SENTENCES = ["Tim Cook is the CEO of Apple, based in Cupertino, California.",
             "Angela Merkel flew from Berlin to Paris to meet Emmanuel Macron."]
USAGE_KEYS = {"prompt_tokens", "total_tokens"}
ERROR_KEYS = {"message", "type", "param", "code"}


def _ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _usage(body: dict, prompt_tokens: int) -> None:
    assert set(body["usage"]) == USAGE_KEYS
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == prompt_tokens > 0


def _loaded(server) -> set[str]:
    return {m["id"] for m in server.status()["models"]}


# Rerank -----------------------------------------------------------------------------------------------------
def test_rerank_shape_order_and_scores_equal_the_local_runtime(server, runtime):
    local = runtime.rerank(FRANCE, DOCUMENTS, MINILM)
    body = _ok(server.post("universal/v1/rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS}))
    assert set(body) == {"id", "object", "model", "results", "usage"}
    assert body["object"] == "rerank" and body["model"] == MINILM and body["id"].startswith("rerank-")
    _usage(body, local.prompt_tokens)
    results = body["results"]
    assert all(set(r) == {"index", "relevance_score", "document"} for r in results)
    assert [r["index"] for r in results] == [hit.index for hit in local.hits]
    assert np.allclose([r["relevance_score"] for r in results], [hit.score for hit in local.hits], atol=1e-5)
    assert [r["document"] for r in results] == [{"text": DOCUMENTS[r["index"]]} for r in results]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)  # best first
    assert {results[0]["index"], results[1]["index"]} == {1, 3}  # the two about France's capital


def test_rerank_top_n_text_objects_and_no_documents(server, runtime):
    local = runtime.rerank(FRANCE, DOCUMENTS, MINILM, top_n=2)
    body = _ok(server.post("universal/v1/rerank", {
        "model": MINILM, "query": FRANCE, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2,
        "return_documents": False, "user": "ignored"}))
    assert [set(r) for r in body["results"]] == [{"index", "relevance_score"}] * 2  # document omitted, not null
    assert [r["index"] for r in body["results"]] == [hit.index for hit in local.hits]
    assert np.allclose([r["relevance_score"] for r in body["results"]], [hit.score for hit in local.hits],
                       atol=1e-5)
    again = _ok(server.post("universal/v1/rerank/", {"query": FRANCE, "documents": DOCUMENTS, "top_n": 1}))
    assert again["model"] == MINILM and again["id"] != body["id"]  # the default model; a new id each time
    assert again["results"][0]["index"] == local.hits[0].index


# Classify ---------------------------------------------------------------------------------------------------
def test_classify_zero_shot_shape_and_scores_equal_the_local_runtime(server, runtime):
    local = runtime.classify(TEXTS, MINILM, TOPICS)
    body = _ok(server.post("universal/v1/classify", {"model": MINILM, "input": TEXTS, "labels": TOPICS}))
    assert set(body) == {"id", "object", "model", "data", "usage"}
    assert body["object"] == "list" and body["model"] == MINILM and body["id"].startswith("classify-")
    _usage(body, local.prompt_tokens)
    assert [row["index"] for row in body["data"]] == [0, 1]
    for row, want in zip(body["data"], local.rows):
        assert set(row) == {"index", "label", "score", "scores"}
        assert set(row["scores"]) == set(TOPICS)
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)  # a softmax over the labels
        assert row["label"] == max(row["scores"], key=row["scores"].get) == want.label
        assert row["score"] == pytest.approx(row["scores"][row["label"]]) == pytest.approx(want.score, abs=1e-5)
        assert np.allclose([row["scores"][k] for k in TOPICS], [want.scores[k] for k in TOPICS], atol=1e-5)
    assert [row["label"] for row in body["data"]] == TOPICS

    one = _ok(server.post("universal/v1/classify", {"model": MINILM, "input": TEXTS[1], "labels": TOPICS}))
    assert [(row["index"], row["label"]) for row in one["data"]] == [(0, "cooking")]


# NER --------------------------------------------------------------------------------------------------------
def test_ner_shape_offsets_and_entities_equal_the_local_runtime(server, runtime):
    local = runtime.ner(SENTENCES, SPACY)
    body = _ok(server.post("universal/v1/ner", {"model": SPACY, "input": SENTENCES}))
    assert set(body) == {"id", "object", "model", "data", "usage"}
    assert body["object"] == "list" and body["model"] == SPACY and body["id"].startswith("ner-")
    _usage(body, local.prompt_tokens)
    assert [row["index"] for row in body["data"]] == [0, 1]
    for text, row, want in zip(SENTENCES, body["data"], local.rows):
        assert set(row) == {"index", "entities"}
        for entity in row["entities"]:
            assert set(entity) == {"text", "label", "start", "end", "score"}
            assert text[entity["start"]:entity["end"]] == entity["text"]
        assert [(e["text"], e["label"], e["start"], e["end"]) for e in row["entities"]] == \
            [(e.text, e.label, e.start, e.end) for e in want]
        assert np.allclose([e["score"] for e in row["entities"]], [e.score for e in want])
    found = {(e["text"], e["label"]) for e in body["data"][0]["entities"]}
    assert {("Tim Cook", "PERSON"), ("Apple", "ORG"), ("Cupertino", "GPE"), ("California", "GPE")} <= found
    people = {e["text"] for e in body["data"][1]["entities"] if e["label"] == "PERSON"}
    assert {"Angela Merkel", "Emmanuel Macron"} <= people

    one = _ok(server.post("universal/v1/ner", {"input": SENTENCES[0]}))  # one string; the default model
    assert one["model"] == SPACY and [row["index"] for row in one["data"]] == [0]
    assert one["data"][0]["entities"] == body["data"][0]["entities"]


# Server mode: the client runtime --------------------------------------------------------------------------
def test_remote_runtime_returns_the_local_results(server, runtime):
    remote = RemoteRuntime(server.url, TOKEN, timeout=120)

    far, near = remote.rerank(FRANCE, DOCUMENTS, MINILM, top_n=3), runtime.rerank(FRANCE, DOCUMENTS, MINILM, top_n=3)
    assert far.model == near.model == MINILM and far.prompt_tokens == near.prompt_tokens
    assert [(h.index, h.document) for h in far.hits] == [(h.index, h.document) for h in near.hits]
    assert np.allclose([h.score for h in far.hits], [h.score for h in near.hits], atol=1e-5)

    far, near = remote.classify(TEXTS, MINILM, TOPICS), runtime.classify(TEXTS, MINILM, TOPICS)
    assert far.model == near.model and far.prompt_tokens == near.prompt_tokens
    assert [row.label for row in far.rows] == [row.label for row in near.rows] == TOPICS
    for a, b in zip(far.rows, near.rows):
        assert list(a.scores) == list(b.scores)  # best first on both sides
        assert np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-5)

    far, near = remote.ner(SENTENCES), runtime.ner(SENTENCES)  # the default model on both sides
    assert far.model == near.model == SPACY and far.prompt_tokens == near.prompt_tokens
    assert [[(e.text, e.label, e.start, e.end) for e in row] for row in far.rows] == \
        [[(e.text, e.label, e.start, e.end) for e in row] for row in near.rows]

    with pytest.raises(WrongTask):  # the typed error survives the trip
        remote.ner(SENTENCES, MINILM)


# Errors -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, body, status, param, code", [
    ("rerank", {"model": MINILM, "query": FRANCE, "documents": []}, 400, "documents", "invalid_value"),
    ("rerank", {"model": MINILM, "query": FRANCE, "documents": "one text"}, 400, "documents", "invalid_value"),
    ("rerank", {"model": MINILM, "query": FRANCE, "documents": [{"title": "no text"}]}, 400, "documents",
     "invalid_value"),
    ("rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS, "top_n": 0}, 400, "top_n",
     "invalid_value"),
    ("rerank", {"model": MINILM, "query": " ", "documents": DOCUMENTS}, 400, "query", "invalid_value"),
    ("rerank", {"model": "no-such-model", "query": FRANCE, "documents": DOCUMENTS}, 404, "model",
     "model_not_found"),
    ("classify", {"model": MINILM, "input": TEXTS, "labels": []}, 400, "labels", "invalid_value"),
    ("classify", {"model": MINILM, "input": TEXTS, "labels": ["sports", "sports"]}, 400, "labels", "invalid_value"),
    ("classify", {"model": MINILM, "input": TEXTS}, 400, "labels", "invalid_value"),  # zero-shot needs labels
    ("classify", {"model": MINILM, "input": [1, 2], "labels": TOPICS}, 400, "input", "invalid_value"),
    ("ner", {"model": MINILM, "input": SENTENCES}, 400, "model", "wrong_model_task"),
    ("ner", {"model": SPACY, "input": SENTENCES, "keep_alive": "soon"}, 400, "keep_alive", "invalid_value"),
    # past MiniLM's 256 tokens, without truncation asked for
    ("classify", {"model": MINILM, "input": ["word " * 400], "labels": TOPICS}, 400, "input", "invalid_value"),
    ("rerank", {"model": MINILM, "query": FRANCE, "documents": ["x", "word " * 400]}, 400, "documents",
     "invalid_value"),
])
def test_errors_are_openai_bodies_naming_the_param(server, path, body, status, param, code):
    response = server.post(f"universal/v1/{path}", body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert response.headers["x-should-retry"] == "false"


def test_truncation_asked_for_serves_long_texts(server, runtime):
    long_text = "word " * 400
    body = _ok(server.post("universal/v1/classify", {"model": MINILM, "input": [long_text], "labels": TOPICS,
                                                      "truncate": True}))
    local = runtime.classify([long_text], MINILM, TOPICS, truncate=True)
    assert body["data"][0]["label"] == local.rows[0].label
    assert np.isclose(body["data"][0]["score"], local.rows[0].score, atol=1e-5)


@pytest.mark.parametrize("path", ["rerank", "classify", "ner"])
def test_missing_token_is_401(server, path):
    response = server.post(f"universal/v1/{path}", {"input": "x", "query": "x", "documents": ["x"]}, token=None)
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS and (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


def test_a_model_that_cannot_do_the_task_loads_nothing(server):
    if SPACY in _loaded(server):  # an earlier test's NER loaded it
        _ok(server.post("universal/api/unload", {"model": SPACY}))
    before = _loaded(server)
    assert SPACY not in before
    for path, body in [("rerank", {"model": SPACY, "query": FRANCE, "documents": DOCUMENTS}),
                       ("classify", {"model": SPACY, "input": TEXTS, "labels": TOPICS}),
                       ("ner", {"model": SMOLLM, "input": SENTENCES})]:
        response = server.post(f"universal/v1/{path}", body)
        assert response.status_code == 400, response.text
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("wrong_model_task", "model")
    assert _loaded(server) == before


# The model list ---------------------------------------------------------------------------------------------
def test_models_list_their_tasks(server):
    cards = {card["id"]: card for card in _ok(server.get("universal/v1/models"))["data"]}
    assert all(isinstance(card["tasks"], list) for card in cards.values())
    assert cards[SPACY]["tasks"] == ["ner"]
    assert cards[MINILM]["tasks"][0] == "embed" and {"embed", "rerank", "classify"} <= set(cards[MINILM]["tasks"])
    assert "ner" not in cards[MINILM]["tasks"]
    assert cards[SMOLLM]["tasks"][0] == "generate" and "classify" in cards[SMOLLM]["tasks"]
    assert _ok(server.get(f"universal/v1/models/{SPACY}"))["tasks"] == ["ner"]
