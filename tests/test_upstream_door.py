"""The compatibility door (`{base_url}universal/runtime/...`, server_ext/upstream): requests written as
LlamaFarm's Universal Runtime documents them (its `api_types/` and routers' docstrings), replayed on
the session's real `jupyter server`. Every field of upstream's response is present with upstream's
type, and the values equal what our own routes (`universal/v1/...`) answer for the same input.

The expected fields are written here from upstream's types, not imported from server_ext/tasks/*_upstream.py:
the test checks the door against upstream, not against itself.
"""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image, ImageDraw, ImageFont

from .conftest import FRANCE, MINILM, SMOLLM

DOOR = "universal/runtime/"
SPACY = "en-core-web-sm"
OCR = "rapidocr"
DOCUMENTS = ["Bananas are a good source of potassium.",
             "Paris is the capital and largest city of France.",
             "The Python language was created by Guido van Rossum.",
             "France's capital hosts the Louvre museum."]
TOPICS = ["sports", "cooking"]
TEXTS = ["The football team won the match.", "I baked a chocolate cake for dessert."]
SENTENCES = ["John works at Google in San Francisco."]  # upstream's NER docstring example


def _ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _typed(value: dict, fields: dict[str, type | tuple]) -> None:
    """Exactly these keys, each of upstream's type (bool is no int or float here)."""
    assert set(value) == set(fields), (sorted(value), sorted(fields))
    for key, kind in fields.items():
        assert isinstance(value[key], kind) and not (isinstance(value[key], bool) and kind is not bool), \
            (key, value[key], kind)


def _refused(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"] == body["error"]["message"]  # upstream's FastAPI key, and ours
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# Rerank ------------------------------------------------------------------------------------------------
def test_rerank_shape_and_values_equal_our_route(server):
    body = _ok(server.post(DOOR + "v1/rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS,
                                                 "top_k": 2, "return_documents": True}))
    _typed(body, {"object": str, "data": list, "model": str, "usage": dict})
    assert body["object"] == "list" and body["model"] == MINILM
    ours = _ok(server.post("universal/v1/rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS,
                                                    "top_n": 2}))
    assert len(body["data"]) == 2  # top_k is honoured
    for row, hit in zip(body["data"], ours["results"]):
        _typed(row, {"index": int, "relevance_score": float, "document": str})
        assert (row["index"], row["relevance_score"], row["document"]) == \
            (hit["index"], hit["relevance_score"], hit["document"]["text"])
    assert body["usage"] == ours["usage"]

    bare = _ok(server.post(DOOR + "v1/rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS,
                                                 "return_documents": False}))
    assert len(bare["data"]) == len(DOCUMENTS) and all(set(row) == {"index", "relevance_score"}
                                                       for row in bare["data"])


# Classify and NER ----------------------------------------------------------------------------------------
def test_classify_shape_and_values_equal_our_route(server):
    body = _ok(server.post(DOOR + "v1/classify", {"model": MINILM, "texts": TEXTS, "labels": TOPICS}))
    _typed(body, {"object": str, "data": list, "total_count": int, "model": str, "usage": dict})
    assert body["total_count"] == len(TEXTS) and body["usage"] == {"texts_processed": len(TEXTS)}
    ours = _ok(server.post("universal/v1/classify", {"model": MINILM, "input": TEXTS, "labels": TOPICS}))
    for i, (row, mine) in enumerate(zip(body["data"], ours["data"])):
        _typed(row, {"index": int, "label": str, "score": float, "all_scores": dict})
        assert (row["index"], row["label"], row["score"], row["all_scores"]) == \
            (i, mine["label"], mine["score"], mine["scores"])
    assert [row["label"] for row in body["data"]] == ["sports", "cooking"]


def test_ner_shape_and_values_equal_our_route(server):
    body = _ok(server.post(DOOR + "v1/ner", {"model": SPACY, "texts": SENTENCES}))
    _typed(body, {"object": str, "data": list, "model": str, "usage": dict})
    assert body["usage"] == {"texts_processed": 1}
    ours = _ok(server.post("universal/v1/ner", {"model": SPACY, "input": SENTENCES}))
    assert body["data"] == ours["data"]
    _typed(body["data"][0], {"index": int, "entities": list})
    for entity in body["data"][0]["entities"]:
        _typed(entity, {"text": str, "label": str, "start": int, "end": int, "score": float})
        assert SENTENCES[0][entity["start"]:entity["end"]] == entity["text"]
    assert {e["text"] for e in body["data"][0]["entities"]} >= {"Google", "San Francisco"}


@pytest.mark.parametrize("path, request_body, status, words", [
    ("classify", {"model": MINILM, "texts": TEXTS}, 400, ["zero-shot", "labels"]),
    ("classify", {"model": MINILM, "texts": TEXTS, "labels": TOPICS, "max_length": 128}, 400, ["max_length"]),
    ("ner", {"model": MINILM, "texts": SENTENCES}, 400, [MINILM]),
    ("rerank", {"model": "no-such-model", "query": FRANCE, "documents": DOCUMENTS}, 404, ["no-such-model"]),
    ("classify", {"model": MINILM, "input": TEXTS, "labels": TOPICS}, 400, ["texts"]),  # our key is not upstream's
])
def test_mistakes_are_refused_with_upstreams_detail(server, path, request_body, status, words):
    _refused(server.post(DOOR + "v1/" + path, request_body), status, *words)


def test_the_door_needs_the_token(server):
    assert server.get(DOOR + "health", token=None).status_code in (401, 403)
    assert server.post(DOOR + "v1/rerank", {"model": MINILM, "query": FRANCE, "documents": DOCUMENTS},
                       token="wrong").status_code == 401


# OCR ------------------------------------------------------------------------------------------------------
def _png(lines: list[str]) -> str:
    image = Image.new("RGB", (420, 130), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((16, 14 + 56 * row), line, fill="black", font=ImageFont.load_default(size=36))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def unload_ocr_afterwards(server):
    yield
    server.post("universal/api/unload", {"model": OCR})


def test_ocr_shape_and_values_equal_our_route(server, unload_ocr_afterwards):
    images = [_png(["Invoice 4217", "Total due 93 EUR"]), _png(["Quarterly report"])]
    body = _ok(server.post(DOOR + "v1/ocr", {"model": OCR, "images": images, "languages": ["en"],
                                              "return_boxes": True}))
    _typed(body, {"object": str, "data": list, "model": str, "usage": dict})
    assert body["model"] == OCR and body["usage"] == {"images_processed": 2}
    ours = _ok(server.post("universal/v1/ocr", {"model": OCR, "images": images, "return_boxes": True}))
    for i, (row, mine) in enumerate(zip(body["data"], ours["data"])):
        _typed(row, {"index": int, "text": str, "confidence": float, "boxes": list})
        assert (row["index"], row["text"], row["confidence"], row["boxes"]) == \
            (i, mine["text"], mine["confidence"], mine["boxes"])
        for box in row["boxes"]:
            _typed(box, {"x1": float, "y1": float, "x2": float, "y2": float, "text": str, "confidence": float})
    assert "4217" in body["data"][0]["text"]
    plain = _ok(server.post(DOOR + "v1/ocr", {"model": OCR, "images": images[:1]}))
    assert set(plain["data"][0]) == {"index", "text", "confidence"}  # boxes only when asked for


@pytest.mark.parametrize("request_body, words", [
    ({"model": "surya", "images": ["aGVsbG8="]}, ["surya", "rapidocr"]),
    ({"model": "easyocr", "images": ["aGVsbG8="]}, ["easyocr", "rapidocr"]),
    ({"model": OCR, "file_id": "file_abc123_def456"}, ["file_id"]),
    ({"model": OCR, "images": ["aGVsbG8="], "languages": ["fr"]}, ["fr"]),
])
def test_ocr_names_what_it_has(server, request_body, words):
    _refused(server.post(DOOR + "v1/ocr", request_body), 400, *words)


# Embeddings, chat, models, health ---------------------------------------------------------------------------
def test_embeddings_equal_our_route_and_take_a_quantization_suffix(server):
    ours = _ok(server.post("universal/v1/embeddings", {"model": MINILM, "input": TEXTS}))
    for model in (MINILM, MINILM + ":Q4_K_M"):
        body = _ok(server.post(DOOR + "v1/embeddings", {"model": model, "input": TEXTS, "encoding_format": "float"}))
        _typed(body, {"object": str, "data": list, "model": str, "usage": dict})
        assert [row["embedding"] for row in body["data"]] == [row["embedding"] for row in ours["data"]]
        _typed(body["data"][0], {"object": str, "index": int, "embedding": list})


def test_chat_completions_through_the_official_client(server):
    door = server.client()
    door.base_url = server.url + DOOR + "v1/"
    ask = dict(model=SMOLLM, messages=[{"role": "user", "content": FRANCE}], max_tokens=6, temperature=0)
    answer = door.chat.completions.create(**ask)
    assert answer.choices[0].message.content == server.client().chat.completions.create(**ask).choices[0].message.content
    assert answer.usage.completion_tokens > 0
    listed = {m.id for m in door.models.list().data}
    assert {SMOLLM, MINILM} <= listed


def test_health_shape(server):
    server.post("universal/api/load", {"model": MINILM})
    body = _ok(server.get(DOOR + "health"))
    _typed(body, {"status": str, "device": dict, "loaded_models": list, "timestamp": str, "pid": int})
    assert body["status"] == "healthy" and MINILM in body["loaded_models"]
    assert body["device"]["device"] in ("cpu", "cuda") and body["pid"] != os.getpid()


# Anomaly ---------------------------------------------------------------------------------------------------
def _sensor_rows() -> list[list[float]]:
    """Upstream's docstring example, `[[1.0, 2.0], [1.1, 2.1], [0.9, 1.9], ...]`, continued: 60 rows near (1, 2)."""
    import numpy as np

    rng = np.random.default_rng(3)
    return (np.array([1.0, 2.0]) + 0.1 * rng.normal(size=(60, 2))).round(3).tolist()


@pytest.fixture
def detector_name(runtime):
    name = f"sensor-detector-{os.getpid()}-{id(runtime) % 10_000}"
    yield name
    runtime.anomaly_delete(name)


@pytest.mark.parametrize("backend", ["isolation_forest", "ecod"])
def test_anomaly_fit_and_score_shapes_and_values_equal_our_route(server, detector_name, backend):
    fit = _ok(server.post(DOOR + "v1/anomaly/fit", {"model": detector_name, "backend": backend,
                                                     "data": _sensor_rows(), "contamination": 0.1}))
    _typed(fit, {"object": str, "model": str, "backend": str, "samples_fitted": int, "training_time_ms": float,
                 "model_params": dict, "encoder": type(None), "status": str})  # no schema: no encoder
    assert (fit["object"], fit["model"], fit["backend"], fit["samples_fitted"], fit["status"]) == \
        ("fit_result", detector_name, backend, 60, "fitted")
    assert fit["model_params"]["contamination"] == 0.1

    probe = [[1.0, 2.0], [1.1, 2.1], [100.0, 200.0]]  # upstream's score example
    body = _ok(server.post(DOOR + "v1/anomaly/score", {"model": detector_name, "backend": backend, "data": probe,
                                                        "threshold": 0.5}))
    _typed(body, {"object": str, "data": list, "total_count": int, "model": str, "backend": str, "summary": dict})
    _typed(body["summary"], {"total_points": int, "anomaly_count": int, "anomaly_rate": float, "threshold": float})
    ours = _ok(server.post("universal/v1/anomaly/score", {"model": detector_name, "data": probe, "threshold": 0.5}))
    for i, (row, mine) in enumerate(zip(body["data"], ours["data"])):
        _typed(row, {"index": int, "score": float, "is_anomaly": bool, "raw_score": float})
        assert row == {**mine, "index": i}
    assert body["summary"] == ours["summary"] and body["summary"]["threshold"] == 0.5
    assert body["total_count"] == 3 and body["data"][2]["is_anomaly"] and body["summary"]["anomaly_count"] >= 1


@pytest.mark.parametrize("path, extra, param, words", [
    ("fit", {"backend": "knn"}, "backend", ["knn", "isolation_forest", "ecod", "copod", "hbos", "one_class_svm"]),
    ("fit", {"backend": "autoencoder"}, "backend", ["autoencoder"]),
    ("fit", {"normalization": "zscore"}, "normalization", ["zscore", "raw_score"]),
    ("fit", {"schema": {"a": "numeric", "agent": "hash"}}, "schema", ["numeric", "hash"]),
    ("fit", {"training_file": "file_1"}, "training_file", ["data"]),
    ("score", {"explain": True}, "explain", ["explain"]),
    ("score", {"backend": "ecod"}, "backend", ["isolation_forest", "ecod"]),  # fitted with the other one
    ("score", {"threshold": 3}, "threshold", ["0..1"]),
])
def test_anomaly_mistakes_name_what_we_have(server, detector_name, path, extra, param, words):
    _ok(server.post(DOOR + "v1/anomaly/fit", {"model": detector_name, "data": _sensor_rows()}))
    response = server.post(DOOR + f"v1/anomaly/{path}", {"model": detector_name, "data": _sensor_rows()[:3], **extra})
    assert _refused(response, 400, *words)["error"]["param"] == param


def test_anomaly_schema_encodes_dict_rows_as_upstream_documents(server, detector_name):
    """Upstream's dict-based format: `data = [{"time_ms": 100, "user_agent": "curl"}]` with
    `schema = {"time_ms": "numeric", "user_agent": "label"}` (label: ordinal codes learned in training)."""
    agents = ["curl", "firefox", "chrome", "safari"]
    train = [{"time_ms": 100 + (i * 7) % 40, "user_agent": agents[i % 4]} for i in range(80)]
    schema = {"time_ms": "numeric", "user_agent": "label"}
    fit = _ok(server.post(DOOR + "v1/anomaly/fit", {"model": detector_name, "backend": "hbos", "data": train,
                                                     "schema": schema}))
    assert fit["encoder"] == {"schema": {"time_ms": "numeric", "user_agent": "ordinal"},
                              "features": ["time_ms", "user_agent"]}
    probe = [{"time_ms": 110, "user_agent": "curl"}, {"time_ms": 5000, "user_agent": "wget"}]
    body = _ok(server.post(DOOR + "v1/anomaly/score", {"model": detector_name, "backend": "hbos", "data": probe,
                                                        "schema": schema}))
    ours = _ok(server.post("universal/v1/anomaly/score", {"model": detector_name, "data": probe}))
    assert [{**row, "index": i} for i, row in enumerate(ours["data"])] == body["data"]
    assert body["data"][1]["score"] > body["data"][0]["score"]
    other = server.post(DOOR + "v1/anomaly/score", {"model": detector_name, "backend": "hbos", "data": probe,
                                                     "schema": {"user_agent": "onehot"}})
    assert _refused(other, 400, "schema")["error"]["param"] == "schema"
