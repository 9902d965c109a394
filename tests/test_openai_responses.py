"""The Responses API through the official `openai` client against a real `jupyter server`."""

from __future__ import annotations

import json
import signal

import jsonschema
import openai
import pytest
from openai.types.responses import Response

from .conftest import SMOLLM, start_server, stop_process

STORY = "Write a very long story about a lighthouse keeper and the storms of one winter."

TOOL = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": False}}


@pytest.fixture
def client(server):
    return server.client()


def _create(client, **kwargs):
    body = dict(model=SMOLLM, input="Say hello.", instructions="You are terse.", max_output_tokens=12,
                temperature=0)
    return client.responses.create(**{**body, **kwargs})


def test_text_response_and_its_stream_agree(client):
    whole = _create(client)
    assert isinstance(whole, Response) and whole.status in ("completed", "incomplete")
    assert whole.output[0].type == "message" and whole.output_text
    assert whole.output_text == whole.output[0].content[0].text
    assert whole.usage.output_tokens > 0 and whole.usage.total_tokens == whole.usage.input_tokens + \
        whole.usage.output_tokens

    events = list(_create(client, stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text == whole.output_text
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens


def test_message_list_input_and_json_schema_format(client):
    schema = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 16}},
              "required": ["greeting"], "additionalProperties": False}
    result = _create(client, input=[{"role": "developer", "content": "Answer in JSON."},
                                    {"role": "user", "content": [{"type": "input_text", "text": "Greet me."}]}],
                     max_output_tokens=40, text={"format": {"type": "json_schema", "name": "greeting",
                                                            "schema": schema}})
    jsonschema.validate(json.loads(result.output_text), schema)


def test_function_tools_and_their_results(client):
    ask = "What is the weather in Paris?"
    result = _create(client, input=ask, tools=[TOOL], tool_choice="required", max_output_tokens=40)
    call = result.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), TOOL["parameters"])

    events = list(_create(client, input=ask, tools=[TOOL], tool_choice="required", max_output_tokens=40,
                          stream=True))
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == done.arguments
    assert done.arguments == call.arguments and events[-1].type == "response.completed"

    follow = _create(client, input=[{"role": "user", "content": ask}, call.model_dump(exclude_none=True),
                                    {"type": "function_call_output", "call_id": call.call_id, "output": "21 C"}],
                     tools=[TOOL], tool_choice="none", max_output_tokens=12)
    assert follow.output_text


def test_stateless_and_bad_requests_are_400s(client):
    for kwargs in (dict(store=True), dict(previous_response_id="resp_1"), dict(input=[{"type": "web_search"}]),
                   dict(tools=[{"type": "web_search"}]), dict(text={"format": {"type": "xml"}})):
        with pytest.raises(openai.BadRequestError) as info:
            _create(client, **kwargs)
        assert info.value.response.headers.get("x-should-retry") == "false"
    with pytest.raises(openai.NotFoundError):
        _create(client, model="no-such-model", stream=True)


@pytest.fixture
def own_server(smollm_path, tmp_path):
    """A `jupyter server` of this test's own, SmolLM2 only, as conftest's `server` starts one: the test
    stops it under a stream, so it cannot be the shared one."""
    srv = start_server(tmp_path, f"--UniversalKernelApp.preload={SMOLLM}", "--UniversalKernelApp.keep_alive=-1",
                       ready=lambda status: any(m["id"] == SMOLLM for m in status["models"]))
    try:
        yield srv
    finally:
        stop_process(srv.process)


def test_a_failure_after_the_stream_began_is_a_failed_event(own_server):
    """The server stops (SIGTERM) while a response streams: the stream has begun, so the failure is not an
    HTTP error but its last events, `error` then `response.failed`, with the text that had arrived."""
    stream = _create(own_server.client(), input=STORY, instructions=None, max_output_tokens=1500, temperature=0.8,
                     extra_body={"seed": 1}, stream=True)
    events, stopped = [], False
    for event in stream:
        events.append(event)
        if not stopped and sum(e.type == "response.output_text.delta" for e in events) == 4:
            own_server.process.send_signal(signal.SIGTERM)
            stopped = True
    assert stopped, f"the response ended before the server was stopped: {[e.type for e in events]}"
    code = own_server.process.wait(timeout=60)
    log = own_server.log_tail()
    assert code == 0 and "universal_kernel: stopping 1 running generation(s)" in log, log

    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"], types
    assert types[-2:] == ["error", "response.failed"], types
    assert set(types[4:-2]) == {"response.output_text.delta"}  # nothing was closed or completed
    assert [e.sequence_number for e in events] == list(range(len(events)))
    error, failed = events[-2], events[-1].response
    assert error.code == "server_shutting_down" and "shutting down" in error.message
    assert failed.status == "failed" and failed.id == events[0].response.id
    assert failed.error.code == error.code and failed.error.message == error.message
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed and failed.output[0].content[0].text == streamed == failed.output_text
    assert failed.output[0].status == "in_progress"
