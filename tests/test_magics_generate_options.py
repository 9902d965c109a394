"""%%generate --n K (several answers, seeded like the server's `n`) and --logprobs N (a table of each
token's probability and its alternatives), on the in-process runtime and through the Jupyter server."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics

from .conftest import TOKEN
from .magics_support import ip, run  # noqa: F401

PROMPT = "Write one word about the sea."


def generate(shell, line: str, prompt: str = PROMPT):
    captured, result = run(shell, f"%%generate {line}\n{prompt}")
    assert result.success, result.error_in_exec
    return captured


def test_n_answers_are_seeded_and_repeat(ip):
    first = generate(ip, "--n 3 --temperature 1 --seed 11 --max-tokens 8 --format text --out answers")
    answers = ip.user_ns["answers"]
    assert isinstance(answers, list) and len(answers) == 3
    assert [line for line in first.stdout.splitlines() if line.startswith("answer ")] == \
        ["answer 1 of 3", "answer 2 of 3", "answer 3 of 3"]
    generate(ip, "--n 3 --temperature 1 --seed 11 --max-tokens 8 --format text --out again")
    assert ip.user_ns["again"] == answers  # a given seed repeats all of them
    generate(ip, "--temperature 1 --seed 12 --max-tokens 8 --format text --out second")
    assert ip.user_ns["second"] == answers[1]  # answer j is the single answer with seed + j
    with pytest.raises(UsageError, match="--chat"):
        ip.run_cell_magic("generate", "--n 2 --chat talk", PROMPT)
    with pytest.raises(UsageError, match="1 to 16"):
        ip.run_cell_magic("generate", "--n 17", PROMPT)


def check_logprobs(shell, line: str) -> None:
    captured = generate(shell, line)
    completion = get_magics(shell).last_generation
    tokens = completion.logprobs
    assert tokens, "no logprobs came back"
    assert "".join(t["token"] for t in tokens) == completion.text
    assert all(len(t["top_logprobs"]) <= 3 and t["logprob"] <= 0 for t in tokens)
    table = [o.data for o in captured.outputs if "logprobs" in o.data.get("text/html", "")]
    assert table and "top alternatives" in table[0]["text/plain"]
    assert repr(tokens[0]["token"]) in table[0]["text/plain"]


def test_logprobs_table_locally(ip):
    check_logprobs(ip, "--logprobs 3 --temperature 0 --max-tokens 6")
    with pytest.raises(UsageError):
        ip.run_cell_magic("generate", "--logprobs 21", PROMPT)


def test_logprobs_through_the_server(ip, server):
    run(ip, f"%runtime use server {server.url} --token {TOKEN}")
    try:
        check_logprobs(ip, "--logprobs 3 --temperature 0 --max-tokens 6")
    finally:
        ip.run_line_magic("runtime", "use local")
