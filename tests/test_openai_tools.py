"""Tools, tool_choice and n > 1 through the official `openai` client against a real `jupyter server`.

The tiny model's choices depend on the CPU: the tests check what the server controls (the call
parses and matches its schema, the wire shapes, streaming equals non-streaming, repeatability).
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from .conftest import SMOLLM

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 12}},
                       "required": ["zone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.fixture
def client(server):
    return server.client()


def _ask(client, **kwargs):
    body = {"model": SMOLLM, "messages": ASK, "tools": [WEATHER, TIME], "max_tokens": 48, "temperature": 0,
            **kwargs}
    return client.chat.completions.create(**body)


def _check_call(call, names=("get_weather", "get_time")):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_and_named_calls_parse_and_match_the_schema(client, seed):
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        result = _ask(client, tool_choice=choice, temperature=1.0, seed=seed)
        message = result.choices[0].message
        assert result.choices[0].finish_reason == "tool_calls"
        assert message.content is None and len(message.tool_calls) == 1
        _check_call(message.tool_calls[0], ("get_time",) if isinstance(choice, dict) else ("get_weather", "get_time"))


def test_streamed_call_equals_the_collected_one(client):
    whole = _ask(client, tool_choice="required")
    stream = _ask(client, tool_choice="required", stream=True)
    pieces, reasons, first = [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                assert delta.index == 0
                if delta.id:
                    first = delta
                pieces.append(delta.function.arguments or "")
    assert reasons == ["tool_calls"]
    call = whole.choices[0].message.tool_calls[0]
    assert first.function.name == call.function.name and first.type == "function"
    assert "".join(pieces) == call.function.arguments
    assert len([piece for piece in pieces if piece]) > 1  # the arguments stream as they are generated


def test_auto_gives_text_or_a_valid_call_and_none_gives_text(client):
    for seed in (1, 2):
        result = _ask(client, tool_choice="auto", temperature=1.0, seed=seed)
        choice = result.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            _check_call(choice.message.tool_calls[0])
        else:
            assert choice.message.content and not choice.message.content.lstrip().startswith("{")
    result = _ask(client, tool_choice="none")
    assert result.choices[0].message.tool_calls is None and result.choices[0].finish_reason in ("stop", "length")


def test_a_conversation_with_tool_results_is_accepted(client):
    first = _ask(client, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    answer = client.chat.completions.create(model=SMOLLM, messages=messages, tools=[WEATHER], tool_choice="none",
                                            max_tokens=16, temperature=0, parallel_tool_calls=False)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")


def test_bad_tools_are_400s(client):
    bad = [dict(tools=[{"type": "retrieval"}]), dict(tools=[WEATHER], tool_choice={"type": "function",
                                                                                   "function": {"name": "nope"}}),
           dict(tools=[WEATHER, WEATHER]), dict(tools=[WEATHER], tool_choice="sometimes"),
           dict(tool_choice="required")]
    for kwargs in bad:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=SMOLLM, messages=ASK, max_tokens=4, **kwargs)
    with pytest.raises(openai.BadRequestError):  # a tool message without its call id
        client.chat.completions.create(model=SMOLLM, max_tokens=4, messages=ASK + [{"role": "tool", "content": "x"}])


def test_n_choices_differ_repeat_with_a_seed_and_count_in_usage(client):
    body = dict(model=SMOLLM, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8,
                temperature=1.0, seed=7)
    one = client.chat.completions.create(**body)
    three = client.chat.completions.create(n=3, **body)
    again = client.chat.completions.create(n=3, **body)
    assert [c.index for c in three.choices] == [0, 1, 2]
    texts = [c.message.content for c in three.choices]
    assert texts == [c.message.content for c in again.choices]
    assert texts[0] == one.choices[0].message.content and len(set(texts)) > 1
    assert three.usage.completion_tokens == sum(
        client.chat.completions.create(**{**body, "seed": 7 + j}).usage.completion_tokens for j in range(3))
    assert three.usage.prompt_tokens == 3 * one.usage.prompt_tokens
    streamed: dict[int, str] = {}
    for chunk in client.chat.completions.create(n=3, stream=True, **body):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[i] for i in range(3)] == texts
    completions = client.completions.create(model=SMOLLM, prompt=["A", "B"], n=2, max_tokens=4, seed=1)
    assert [c.index for c in completions.choices] == [0, 1, 2, 3]


@pytest.mark.slow
def test_transformers_refuses_constrained_tool_calls_by_name(hf_runtime):
    from universal_kernel.errors import InvalidRequest
    from universal_kernel.server_ext.tools import plan_tools

    for choice in ("auto", "required"):
        fmt = plan_tools([WEATHER], choice).response_format()
        with pytest.raises(InvalidRequest) as info:
            hf_runtime.generate(SMOLLM, messages=ASK, params={"max_tokens": 2, "response_format": fmt},
                                backend="transformers")
        assert info.value.param == "tool_choice"
