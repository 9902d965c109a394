"""SmolLM2 GGUF on llama-cpp-python through the runtime, checked against raw llama-cpp-python."""

from __future__ import annotations

import json

import pytest

from universal_kernel import Busy, GenerationParams, InvalidRequest, Runtime, RuntimeConfig, WrongTask

from .conftest import FRANCE, MINILM, SMOLLM

GREEDY = {"temperature": 0.0, "max_tokens": 32}
CHAT = [{"role": "user", "content": FRANCE}]

# What a tiny model answers depends on the CPU's kernels (SPEC §6): these tests compare the runtime
# with raw llama-cpp-python on the same machine, never with an answer written here.


def stop_word(text: str) -> str:
    """A word from the middle of `text` that first occurs after its start: a stop string the text holds.

    It starts with a letter or digit, so that it also passes as a magic's option value.
    """
    words = text.split()
    assert len(words) >= 3, f"too short a text to cut: {text!r}"
    middle = len(words) // 2
    return next(w for w in words[middle:] + words[1:middle] if w[0].isalnum() and text.index(w) > 0)


def raw_chat(raw_llama, messages, **params) -> dict:
    raw_llama.reset()  # a fresh evaluation: the raw Llama would reuse its prompt cache from the last call
    return raw_llama.create_chat_completion(messages=messages, **params)


def test_greedy_chat_equals_raw_llama_cpp(runtime, raw_llama):
    ours = runtime.generate(SMOLLM, messages=CHAT, params=GREEDY)
    raw = raw_chat(raw_llama, CHAT, temperature=0.0, max_tokens=32)
    assert ours.text and ours.text == raw["choices"][0]["message"]["content"]
    assert ours.finish_reason == raw["choices"][0]["finish_reason"]
    assert ours.finish_reason in ("stop", "length")
    assert ours.prompt_tokens == raw["usage"]["prompt_tokens"]
    assert ours.completion_tokens == raw["usage"]["completion_tokens"]
    assert (ours.finish_reason == "length") == (ours.completion_tokens == 32)


def test_greedy_completion_equals_raw_text_and_usage(runtime, raw_llama):
    prompt = "The three primary colours are"
    ours = runtime.generate(SMOLLM, prompt=prompt, params={"temperature": 0.0, "max_tokens": 12})
    raw_llama.reset()
    raw = raw_llama.create_completion(prompt, temperature=0.0, max_tokens=12)
    assert ours.text == raw["choices"][0]["text"]
    assert ours.finish_reason == "length"
    assert ours.prompt_tokens == raw["usage"]["prompt_tokens"]
    assert ours.completion_tokens == raw["usage"]["completion_tokens"] == 12


def test_usage_counts_match_the_tokenizer(runtime, raw_llama):
    ours = runtime.generate(SMOLLM, messages=CHAT, params=GREEDY)
    prompt, _ = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM).backend.chat_prompt(CHAT)
    assert ours.prompt_tokens == len(raw_llama.tokenize(prompt.encode(), special=True))
    assert ours.completion_tokens == len(raw_llama.tokenize(ours.text.encode(), add_bos=False, special=True))
    assert ours.completion_tokens > 0


def test_streamed_pieces_join_to_the_non_streamed_text(runtime):
    whole = runtime.generate(SMOLLM, messages=CHAT, params=GREEDY)
    stream = runtime.stream(SMOLLM, messages=CHAT, params=GREEDY)
    pieces = list(stream)
    assert len(pieces) > 2
    assert "".join(pieces) == whole.text == stream.completion.text


def test_stop_strings_end_the_text_before_the_stop(runtime, raw_llama):
    whole = runtime.generate(SMOLLM, messages=CHAT, params=GREEDY).text
    word = stop_word(whole)  # taken from this machine's own greedy text
    for stop in (word, ["zzz", word]):
        cut = runtime.generate(SMOLLM, messages=CHAT, params={**GREEDY, "stop": stop})
        assert cut.text == whole[: whole.index(word)]
        assert cut.finish_reason == "stop"
    raw = raw_chat(raw_llama, CHAT, temperature=0.0, max_tokens=32, stop=[word])
    assert raw["choices"][0]["message"]["content"] == whole[: whole.index(word)]


def test_max_tokens_gives_finish_reason_length(runtime):
    out = runtime.generate(SMOLLM, prompt="Count: one, two, three,", params={"temperature": 0, "max_tokens": 4})
    assert out.finish_reason == "length" and out.completion_tokens == 4


def test_seed_makes_sampling_repeatable(runtime):
    params = {"temperature": 0.9, "max_tokens": 16, "seed": 1234}
    first = runtime.generate(SMOLLM, prompt="My favourite animal is", params=params).text
    second = runtime.generate(SMOLLM, prompt="My favourite animal is", params=params).text
    assert first == second and first


def test_json_schema_is_grammar_constrained(runtime):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"]}
    out = runtime.generate(SMOLLM, messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
                           params={"temperature": 0, "max_tokens": 48,
                                   "response_format": {"type": "json_schema", "schema": schema}})
    data = json.loads(out.text)
    assert isinstance(data["city"], str) and isinstance(data["population"], int)


def test_closing_a_stream_stops_within_one_token_and_frees_the_model(runtime):
    entry = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM)
    cancelled = entry.figures.summary()["cancelled"]
    stream = runtime.stream(SMOLLM, prompt="Once upon a time",
                            params={"temperature": 0, "max_tokens": 400})
    for _ in range(3):
        next(stream)
    stream.close()
    # close() waits a few seconds at most; a busy machine may need longer to end the step under way
    assert stream.request.finished.wait(120)
    # the model is free: nothing runs and nothing waits, so the next request starts at once
    assert entry.worker.running is None and entry.worker.queue_depth == 0
    # The worker stops at the first token after the cancel: at most one more piece came through.
    extra = 0
    while not stream._inbox.empty():
        kind, _ = stream._inbox.get()
        extra += kind == "text"
    assert extra <= 1
    assert stream.stats.finish_reason == "cancelled"
    nxt = runtime.generate(SMOLLM, prompt="Hello", params={"temperature": 0, "max_tokens": 2})
    assert nxt.completion_tokens == 2
    assert entry.figures.summary()["cancelled"] == cancelled + 1


def test_keyboard_interrupt_while_reading_cancels(runtime):
    entry = next(e for e in runtime.cache.entries() if e.spec.id == SMOLLM)
    stream = runtime.stream(SMOLLM, prompt="Once upon a time, in a land", params={"temperature": 0, "max_tokens": 400})
    next(stream)
    stream._inbox.put(("error", KeyboardInterrupt()))  # what a kernel interrupt raises inside the read
    with pytest.raises(KeyboardInterrupt):
        list(stream)
    assert stream.request.finished.wait(120)
    assert stream.stats.finish_reason == "cancelled" and entry.worker.running is None


def test_requests_run_one_at_a_time_in_order_and_a_full_queue_is_busy(smollm_path, tmp_path):
    # parallel=1: one sequence at a time (test_concurrency.py covers generations decoded together)
    rt = Runtime(RuntimeConfig(model_folders=[tmp_path], queue_length=2, keep_alive=-1, parallel=1), reaper=False)
    try:
        long = {"temperature": 0, "max_tokens": 300}
        first = rt.stream(SMOLLM, prompt="Once upon a time", params=long)
        next(first)  # running
        second = rt.stream(SMOLLM, prompt="A", params={"temperature": 0, "max_tokens": 2})
        third = rt.stream(SMOLLM, prompt="B", params={"temperature": 0, "max_tokens": 2})
        with pytest.raises(Busy) as busy:
            rt.stream(SMOLLM, prompt="C", params={"temperature": 0, "max_tokens": 2})
        assert busy.value.retry_after > 0
        first.close()
        second.result(), third.result()
        assert second.request.started < third.request.started
        assert first.request.started < second.request.started
    finally:
        rt.close()


def test_async_stream_gives_the_same_text(runtime):
    import asyncio

    async def run():
        stream = await runtime.astream(SMOLLM, messages=CHAT, params=GREEDY)
        return [piece async for piece in stream], stream.completion

    pieces, completion = asyncio.run(run())
    assert "".join(pieces) == completion.text == runtime.generate(SMOLLM, messages=CHAT, params=GREEDY).text


def test_bad_requests_are_typed_errors(runtime):
    with pytest.raises(InvalidRequest):
        runtime.generate(SMOLLM, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(InvalidRequest):
        runtime.generate(SMOLLM, messages=[])
    with pytest.raises(InvalidRequest):
        GenerationParams(max_tokens=0)
    with pytest.raises(InvalidRequest):
        runtime.generate(SMOLLM, prompt="x", params={"temperature": 5})
    with pytest.raises(WrongTask):
        runtime.generate(MINILM, prompt="x")
    with pytest.raises(WrongTask):
        runtime.embed(["x"], SMOLLM)


def test_text_parts_in_messages_are_flattened(runtime):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Which city is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    assert runtime.generate(SMOLLM, messages=parts, params=GREEDY).text == \
        runtime.generate(SMOLLM, messages=CHAT, params=GREEDY).text
