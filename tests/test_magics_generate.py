"""%%generate in a real InteractiveShell on the real SmolLM2: every option and every UsageError."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics
from universal_kernel.magics.generate import Conversation, unescape
from universal_kernel.magics.interpolate import interpolate

from .conftest import FRANCE, MINILM, SMOLLM
from .magics_support import Recorder, bundles, ip, run  # noqa: F401
from .test_generation_llama import stop_word

GREEDY = "--temperature 0 --max-tokens 16"
FRANCE_CHAT = [{"role": "user", "content": FRANCE}]


def greedy_text(runtime) -> str:
    """What the runtime itself answers to FRANCE with GREEDY's options: what the magic must show.

    The tiny model's answer depends on the CPU (SPEC §6), so the magic is compared with the runtime.
    """
    return runtime.generate(SMOLLM, messages=FRANCE_CHAT, params={"temperature": 0, "max_tokens": 16}).text


@pytest.fixture
def rec(ip, runtime):
    from universal_kernel.magics import get_magics

    recorder = Recorder(runtime)
    get_magics(ip).set_local_runtime(recorder)
    return recorder


def test_load_ext_imports_no_heavy_library():
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; "
            "ip = InteractiveShell.instance(); ip.run_line_magic('load_ext', 'universal_kernel'); "
            "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'pandas', 'ipywidgets') if m in sys.modules]; "
            "print(heavy, sorted(ip.magics_manager.magics['cell']).count('generate'), "
            "'embed' in ip.magics_manager.magics['line'], 'runtime' in ip.magics_manager.magics['line'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "1", "True", "True"]


def test_streams_then_renders_markdown_with_footer(ip, rec, runtime):
    captured, result = run(ip, f"%%generate {GREEDY} --out answer\n{FRANCE}")
    assert result.success, result.error_in_exec
    assert ip.user_ns["answer"] and ip.user_ns["answer"] == greedy_text(runtime)
    data = bundles(captured)
    live = [d for d in data if d.get("text/plain", "").endswith("\u258c")]
    assert len(live) >= 3  # the empty start, then growing text
    assert any(len(d["text/plain"]) > 1 and d["text/plain"][:-1] in ip.user_ns["answer"] for d in live[1:])
    final = data[-2]
    assert final["text/markdown"] == ip.user_ns["answer"]
    footer = data[-1]["text/plain"]
    assert "\n" not in footer
    for part in (SMOLLM, "TTFT", "tokens/s", "tokens", "RSS", "MiB"):
        assert part in footer
    assert captured.outputs[-2].update  # the final text replaces the live one in place
    params = rec.last["params"]
    assert params.temperature == 0 and params.max_tokens == 16
    assert rec.last["messages"] == [{"role": "user", "content": FRANCE}]


def test_no_stream_shows_only_the_final_text(ip, rec, runtime):
    captured, result = run(ip, f"%%generate {GREEDY} --no-stream --out a\n{FRANCE}")
    assert result.success
    data = bundles(captured)
    assert len(data) == 2 and "TTFT" in data[1]["text/plain"]
    assert data[0]["text/markdown"] == ip.user_ns["a"] == greedy_text(runtime)


def test_format_text_and_code(ip, rec):
    captured, _ = run(ip, f"%%generate {GREEDY} --format text\n{FRANCE}")
    assert set(bundles(captured)[-2]) == {"text/plain"}
    captured, _ = run(ip, "%%generate --temperature 0 --max-tokens 48 --format code --out code\n"
                          "Write a Python function that adds two numbers. Only code.")
    final = bundles(captured)[-2]
    assert final["text/markdown"].startswith("```") and final["text/markdown"].rstrip().endswith("```")
    assert "def " in final["text/plain"] and "```" not in final["text/plain"]


def test_format_json_parses_into_out(ip, rec):
    captured, result = run(ip, "%%generate --temperature 0 --max-tokens 64 --format json --out obj\n"
                               "Give a JSON object with the keys city and country for Paris.")
    assert result.success
    assert rec.last["params"].response_format == {"type": "json_object"}
    obj = ip.user_ns["obj"]
    assert isinstance(obj, dict), obj
    assert "application/json" in bundles(captured)[-2]


def test_system_seed_top_p_stop_and_model(ip, rec):
    run(ip, f'%%generate -m {SMOLLM} --system "Answer in one word." --top-p 0.5 --seed 7 --stop "\\n" "." '
            f"--temperature 1 --max-tokens 16 --out a\n{FRANCE}")
    kwargs = rec.last
    assert rec.calls[-1][1] == (SMOLLM,)
    assert kwargs["messages"][0] == {"role": "system", "content": "Answer in one word."}
    params = kwargs["params"]
    assert params.top_p == 0.5 and params.seed == 7 and params.stop == ["\n", "."]
    assert "\n" not in ip.user_ns["a"] and "." not in ip.user_ns["a"]
    # the same seed gives the same sample
    run(ip, f"%%generate --seed 7 --temperature 1 --max-tokens 12 --out s1\n{FRANCE}")
    run(ip, f"%%generate --seed 7 --temperature 1 --max-tokens 12 --out s2\n{FRANCE}")
    assert ip.user_ns["s1"] == ip.user_ns["s2"]


def test_stop_string_cuts_the_text(ip, rec, runtime):
    whole = greedy_text(runtime)
    word = stop_word(whole)  # from this machine's own greedy text
    captured, result = run(ip, f"%%generate {GREEDY} --stop {shlex.quote(word)} --out cut\n{FRANCE}")
    assert result.success, result.error_in_exec
    assert rec.last["params"].stop == [word]
    assert ip.user_ns["cut"] == whole[: whole.index(word)]
    assert get_magics(ip).last_generation.finish_reason == "stop"


def test_max_tokens_is_noted_in_the_footer(ip, rec):
    captured, _ = run(ip, "%%generate --temperature 0 --max-tokens 3 --out short\nCount from one to twenty.")
    assert "3 tokens" in bundles(captured)[-1]["text/plain"]
    assert "max-tokens" in bundles(captured)[-1]["text/plain"]


def test_chat_keeps_the_conversation(ip, rec):
    ip.user_ns.pop("conv", None)
    run(ip, f"%%generate {GREEDY} --chat conv --system 'Be brief.'\n{FRANCE}")
    run(ip, f"%%generate {GREEDY} --chat conv --out again\nAnd of Italy?")
    conv = ip.user_ns["conv"]
    assert isinstance(conv, Conversation) and conv.turns == 2
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "user", "assistant"]
    sent = rec.last["messages"]
    assert sent[:3] == conv.messages[:3] and sent[-1] == {"role": "user", "content": "And of Italy?"}
    assert conv.messages[2]["content"] and conv.messages[4]["content"] == ip.user_ns["again"]
    assert "Conversation(2 turns)" in repr(conv)


def test_interpolation_fills_names_and_leaves_code_braces(ip, rec):
    ip.user_ns.update(country="France", place=type("Place", (), {"city": "Lyon"})())
    cell = ('Which city is the capital of {country}? Not {place.city}.\n'
            'def f(x): return {"a": x, **{k: 1 for k in x}}\n'
            '{"json": [1, 2]} {missing} {place.nothing} {{country}}')
    run(ip, f"%%generate {GREEDY}\n{cell}")
    prompt = rec.last["messages"][-1]["content"]
    assert prompt.startswith("Which city is the capital of France? Not Lyon.")
    assert 'def f(x): return {"a": x, **{k: 1 for k in x}}' in prompt
    assert '{"json": [1, 2]} {missing} {place.nothing} {country}' in prompt
    run(ip, f"%%generate {GREEDY} --no-interpolate --system 'about {{country}}'\n{cell}")
    assert rec.last["messages"][-1]["content"] == cell


def test_interpolate_function_cases():
    ns = {"x": 1, "d": {"k": 2}, "s": "text"}
    assert interpolate("{x} {s.upper} {y} { x } {x!r} {d[k]}", ns).startswith("1 <built-in method")
    assert interpolate("{ x } {x!r} {d[k]} {y}", ns) == "{ x } {x!r} {d[k]} {y}"
    assert interpolate("{{x}} {{y}}", ns) == "{x} {{y}}"
    assert interpolate('{"x": 1}', ns) == '{"x": 1}'


def test_unescape():
    assert unescape(r"\n") == "\n" and unescape(r"a\tb\\n") == "a\tb\\n"


@pytest.mark.parametrize("line, cell, message", [
    (GREEDY, "   \n", "needs a prompt"),
    ("--max-tokens x", FRANCE, "invalid int value"),
    ("--max-tokens 0", FRANCE, "--max-tokens"),
    ("--temperature 5", FRANCE, "--temperature"),
    ("--top-p 0", FRANCE, "--top-p"),
    ("--format yaml", FRANCE, "invalid choice"),
    ("--out 1x", FRANCE, "--out needs a Python variable name"),
    ("--chat 'my chat'", FRANCE, "--chat needs a Python variable name"),
    ("--unknown", FRANCE, "unrecognized arguments"),
    ("--system 'unclosed", FRANCE, "cannot parse"),
    ("-m no-such-model", FRANCE, "no-such-model"),
    (f"-m {MINILM}", FRANCE, "embedding model"),
    ("-m ../../etc/passwd", FRANCE, "passwd"),
])
def test_usage_errors_are_one_line(ip, line, cell, message):
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("generate", line, cell)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_usage_error_shows_no_traceback(ip):
    ip.user_ns["taken"] = 3
    captured, result = run(ip, f"%%generate --chat taken\n{FRANCE}")
    assert isinstance(result.error_in_exec, UsageError)
    assert "already holds a int" in str(result.error_in_exec)
    assert "Traceback" not in captured.stdout + captured.stderr


def test_terminal_ipython_prints_the_pieces_and_the_footer(ip, capsys, runtime):
    ip.run_cell_magic("generate", f"{GREEDY} --out t", FRANCE)  # no capture: the plain terminal publisher
    out = capsys.readouterr().out
    assert ip.user_ns["t"] and ip.user_ns["t"] == greedy_text(runtime)
    assert ip.user_ns["t"] in out
    assert out.rstrip().splitlines()[-1].startswith(f"{SMOLLM} (llama_cpp) \u00b7 TTFT")


def test_a_failure_mid_stream_is_a_one_line_usage_error(ip, runtime):
    from universal_kernel import GenerationFailed
    from universal_kernel.magics import get_magics

    class FailingStream:
        model, parts, text = SMOLLM, ["The"], "The"

        def __iter__(self):
            yield "The"
            raise GenerationFailed("llama.cpp failed while generating:\nboom")

        def close(self):
            self.closed = True

    class FailingRuntime:
        def stream(self, *args, **kwargs):
            return FailingStream()

    get_magics(ip).set_local_runtime(FailingRuntime())
    captured, result = run(ip, f"%%generate\n{FRANCE}")
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec) == "llama.cpp failed while generating: boom"
    assert bundles(captured)[-2] == {"text/plain": "The"}
