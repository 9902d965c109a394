"""LangChain's `ChatOpenAI.bind_tools(...)` against the real `jupyter server` with the extension: the
agent frameworks' way of calling tools, streamed and not, and a tool result sent back."""

from __future__ import annotations

import jsonschema
import langchain_openai
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from .conftest import SMOLLM, TOKEN


@tool
def get_weather(city: str, days: int) -> str:
    """The weather forecast for a city over some days."""
    return f"sunny in {city} for {days} days"


def chat(server, **kwargs):
    return langchain_openai.ChatOpenAI(base_url=server.url + "universal/v1", api_key=TOKEN, model=SMOLLM,
                                       temperature=0, max_tokens=48, max_retries=0, timeout=120, **kwargs)


def schema() -> dict:
    return get_weather.tool_call_schema.model_json_schema()


def test_bind_tools_named_call_parses_and_matches_the_schema(server):
    bound = chat(server).bind_tools([get_weather], tool_choice="get_weather")
    message = bound.invoke("What will the weather be in Lyon for the next three days?")
    assert len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], schema())
    assert message.response_metadata["finish_reason"] == "tool_calls"

    # the tool's result goes back as a tool message; the model answers in text
    result = get_weather.invoke(call["args"])
    history = [HumanMessage("What will the weather be in Lyon for the next three days?"), message,
               ToolMessage(result, tool_call_id=call["id"])]
    answer = chat(server).bind_tools([get_weather], tool_choice="none").invoke(history)
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


def test_bind_tools_streamed_chunks_add_up_to_a_call(server):
    bound = chat(server, streaming=True).bind_tools([get_weather], tool_choice="required")
    total = None
    for chunk in bound.stream("Forecast for Oslo, two days."):
        total = chunk if total is None else total + chunk
    assert total is not None and len(total.tool_calls) == 1, total
    call = total.tool_calls[0]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], schema())
