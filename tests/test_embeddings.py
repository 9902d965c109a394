"""all-MiniLM-L6-v2 through the runtime, checked against sentence-transformers on the same folder."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import MINILM

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "",
    "A man is eating food.",  # duplicate
    "Quarterly revenue grew by 12 percent, driven by strong demand in the cloud segment. " * 30,  # > 256 tokens
    "Ünïcödé and emoji 🚀 work too.",
    "short",
]


@pytest.fixture(scope="session")
def sentence_transformer(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


def _cosine_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_vectors_match_sentence_transformers_on_every_row(runtime, sentence_transformer):
    ours = runtime.embed(TEXTS, MINILM)
    theirs = sentence_transformer.encode(TEXTS, batch_size=32, normalize_embeddings=True)
    assert ours.vectors.dtype == np.float32 and ours.vectors.shape == (len(TEXTS), 384)
    assert _cosine_rows(ours.vectors, theirs).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours.vectors, axis=1), 1.0, atol=1e-5)


def test_related_sentences_score_above_unrelated_ones(runtime):
    v = runtime.embed(["How do I bake bread?", "A recipe for baking a loaf of bread",
                       "The stock market fell sharply today"], MINILM).vectors
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_order_is_kept_and_duplicates_are_embedded_once(runtime):
    texts = ["gamma ray", "alpha beta", "gamma ray", "delta", "alpha beta unique-%d" % id(runtime)]
    result = runtime.embed(texts, MINILM)
    np.testing.assert_array_equal(result.vectors[0], result.vectors[2])
    assert result.stats.rows_computed + result.stats.rows_cached == len(texts)
    assert result.stats.rows_computed <= 4
    single = runtime.embed("delta", MINILM).vectors
    np.testing.assert_allclose(single[0], result.vectors[3], atol=1e-6)


def test_a_second_run_is_served_from_the_cache(runtime):
    texts = [f"cache probe sentence number {i}" for i in range(20)]
    first = runtime.embed(texts, MINILM)
    second = runtime.embed(texts, MINILM)
    assert first.stats.rows_computed == 20 and second.stats.rows_computed == 0
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert second.prompt_tokens == first.prompt_tokens > 20


def test_prompt_tokens_are_real_counts(runtime, minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    texts = ["one two three", "a much longer sentence with more tokens in it"]
    expected = sum(len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in texts)
    assert runtime.embed(texts, MINILM).prompt_tokens == expected


def test_without_normalisation_the_direction_is_the_same(runtime, sentence_transformer):
    raw = runtime.embed(["Vectors without normalisation"], MINILM, normalize=False).vectors
    theirs = sentence_transformer.encode(["Vectors without normalisation"], normalize_embeddings=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    assert _cosine_rows(raw, theirs).min() >= 0.9999


def test_pooling_follows_the_sentence_transformers_config(tmp_path):
    from universal_kernel.backends.transformers_embed import read_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        '[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]')
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert read_pooling(tmp_path) == ("cls", False, None)
