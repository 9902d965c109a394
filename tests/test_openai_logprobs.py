"""logprobs / top_logprobs on chat and text completions through the official client, on a real server."""

from __future__ import annotations

import math

import openai
import pytest

from .conftest import SMOLLM

ASK = [{"role": "user", "content": "Name three fruits."}]


@pytest.fixture
def client(server):
    return server.client()


def _check_tokens(tokens, text, top):
    assert "".join(t.token for t in tokens) == text
    for t in tokens:
        assert t.logprob <= 0 and math.isfinite(t.logprob) and isinstance(t.bytes, list)
        assert len(t.top_logprobs) == top
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        if top:
            assert t.top_logprobs[0].logprob >= t.logprob


def test_chat_logprobs_concatenate_to_the_text_streamed_or_not(client):
    body = dict(model=SMOLLM, messages=ASK, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**body)
    choice = whole.choices[0]
    _check_tokens(choice.logprobs.content, choice.message.content, 3)
    plain = client.chat.completions.create(**{**body, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content

    text, streamed = "", []
    for chunk in client.chat.completions.create(stream=True, **body):
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None:
                streamed.extend(c.logprobs.content)
    assert text == choice.message.content
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in choice.logprobs.content]

    zero = client.chat.completions.create(**{**body, "top_logprobs": 0})
    _check_tokens(zero.choices[0].logprobs.content, zero.choices[0].message.content, 0)


def test_completion_logprobs_legacy_form(client):
    result = client.completions.create(model=SMOLLM, prompt="The capital of France is", max_tokens=8,
                                       temperature=0, logprobs=2, echo=True)
    choice = result.choices[0]
    lp = choice.logprobs
    generated = "".join(lp.tokens)
    assert choice.text.endswith(generated) and len(lp.token_logprobs) == len(lp.tokens)
    assert lp.text_offset[0] == len("The capital of France is")
    assert all(choice.text[o:].startswith(t) for o, t in zip(lp.text_offset, lp.tokens))
    assert all(len(top) <= 2 for top in lp.top_logprobs)


def test_bad_logprobs_are_400s(client):
    for kwargs in (dict(logprobs=True, top_logprobs=21), dict(top_logprobs=2)):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=SMOLLM, messages=ASK, max_tokens=2, **kwargs)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=SMOLLM, prompt="x", max_tokens=2, logprobs=21)


@pytest.mark.slow
def test_transformers_logprobs_concatenate_to_the_text(hf_runtime):
    out = hf_runtime.generate(SMOLLM, messages=ASK, params={"temperature": 0, "max_tokens": 10, "logprobs": 2},
                              backend="transformers")
    assert "".join(t["token"] for t in out.logprobs) == out.text and out.logprobs
    for t in out.logprobs:
        assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 2
        assert t["top_logprobs"][0]["logprob"] >= t["logprob"] - 1e-6
