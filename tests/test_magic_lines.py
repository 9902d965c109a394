"""Magic lines as people write them, in a real InteractiveShell on the session's models: a trailing
`# comment`, a `{name}` that is not defined, the help that `%%generate?` and `%runtime?` show, the
README's options against each magic's parser, and what the lazy Dask and %anomaly lines print."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.oinspect import getdoc

from universal_kernel.magics import get_magics
from universal_kernel.magics.common import drop_comment
from universal_kernel.magics.interpolate import interpolate
from universal_kernel.magics.runtime_magic import ACTIONS, USE_TARGETS
from universal_kernel.tasks import TASKS

from .conftest import MINILM
from .magics_support import Recorder, ip, run  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"
TEXTS = ["The striker scored twice in the final.", "Parliament passed the budget.", "The referee stopped the game."]


@pytest.fixture
def rec(ip, runtime):
    recorder = Recorder(runtime)
    get_magics(ip).set_local_runtime(recorder)
    return recorder


@pytest.fixture
def df(ip):
    frame = pd.DataFrame({"text": TEXTS}, index=[10, 20, 30])
    ip.user_ns["df"] = frame
    return frame


def ran(shell, code: str):
    captured, result = run(shell, code)
    assert result.success, f"{code!r}: {result.error_in_exec or result.error_before_exec}"
    return captured, result.result


def our_magics(shell) -> dict[str, object]:
    """Each magic of universal-kernel by name: the object IPython calls (and inspects for `%name?`)."""
    names = ["generate", "embed", "runtime", *(name for name, parts in TASKS.items() if parts.magic)]
    found = {}
    for name in dict.fromkeys(names):
        magic = shell.find_cell_magic(name) if name == "generate" else shell.find_line_magic(name)
        assert magic is not None, f"%{name} is not registered"
        found[name] = magic
    return found


def parser_of(magic):
    parser = getattr(magic, "parser", None)  # the methods of UniversalKernelMagics
    return parser if parser is not None else magic._module().magic.parser  # a TaskMagic


# 1. A trailing comment --------------------------------------------------------------------------------
@pytest.mark.parametrize("line, kept", [
    ("df.text --column vec   # or store the vectors", "df.text --column vec"),
    ("status   # models, memory, expiry", "status"),
    ('use server http://host:8000/v1 --token K  # an OpenAI base URL', 'use server http://host:8000/v1 --token K'),
    ('"Where is # the tower?" df.text --top 3  # best first', '"Where is # the tower?" df.text --top 3'),
    ("df['a # b'] --column c # a column", "df['a # b'] --column c"),
    (r'"it\"s # here" docs # note', r'"it\"s # here" docs'),
    ("df#1 --labels a,b", "df#1 --labels a,b"),  # as in bash: `#` inside a word is no comment
    ("# only a comment", ""),
])
def test_drop_comment_cuts_only_a_comment_outside_quotes(line, kept):
    assert drop_comment(line) == kept


def test_a_trailing_comment_is_ignored_by_every_magic(ip, rec, df):
    """The README's annotated lines, run as cells: each does what the line without its comment does."""
    ran(ip, "%embed df.text --column vec                 # or store the vectors as a new column")
    assert list(df.columns) == ["text", "vec"] and df.vec.map(len).tolist() == [384] * 3

    ran(ip, '%embed "a # b" --out v   # a hash inside quotes is text')
    assert rec.calls[-1][1][0] == ["a # b"]

    _, status = ran(ip, "%runtime status                             # models, memory, expiry, figures")
    assert MINILM in {m["id"] for m in status["models"]}

    ran(ip, "%classify df.text --labels sports,politics --column topic  # adds topic, topic_score")
    assert {"topic", "topic_score"} <= set(df.columns) and set(df.topic) <= {"sports", "politics"}

    ip.user_ns["scans"] = pd.DataFrame({"path": [None, None]})
    ran(ip, "%ocr scans.path --column text   # nothing to read: both paths are missing")
    assert ip.user_ns["scans"].text.tolist() == ["", ""]

    ip.user_ns["empty"] = pd.DataFrame({"text": ["", None]})
    ran(ip, "%ner empty.text --column ents   # no text, no entities")
    assert ip.user_ns["empty"].ents.tolist() == [[], []]

    _, ranked = ran(ip, '%rerank "Who scored?" df.text --top 1   # the best document')
    assert len(ranked) == 1

    ip.user_ns["payments"] = pd.DataFrame({"amount": np.linspace(1.0, 40.0, 40)})
    ran(ip, "%anomaly payments --column score  # adds score, score_is_anomaly")
    assert {"score", "score_is_anomaly"} <= set(ip.user_ns["payments"].columns)

    ran(ip, "%%generate --max-tokens 3 --temperature 0   # a short answer\nSay hi.")
    assert rec.last["params"].max_tokens == 3 and rec.last["messages"][-1]["content"] == "Say hi."

    ran(ip, "%runtime use local   # back to the in-process runtime")
    assert get_magics(ip).use_server is False


def test_a_comment_after_use_server_is_not_an_argument(ip):
    """The line reaches the connection (which fails: nothing listens there), not argparse."""
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("runtime", "use server http://127.0.0.1:9/v1 --token K   # a GPU box")
    assert "unrecognized" not in str(info.value) and "still use" in str(info.value)


# 3. A {name} that is not defined ----------------------------------------------------------------------
def test_interpolate_reports_the_names_it_left():
    left: list[str] = []
    text = interpolate("{city} {country} {city.nope} {{region}} {x:.2f} {d[k]} {country}", {"city": "Paris"}, left)
    assert text == "Paris {country} {city.nope} {{region}} {x:.2f} {d[k]} {country}"
    assert left == ["{country}", "{city.nope}"]  # once each; an escaped {{name}} is meant as written


def test_generate_says_which_names_were_left_as_written(ip, rec):
    ip.user_ns["city"] = "Paris"
    for name in ("country", "topic"):  # the shell is the session's: another test may have defined them
        ip.user_ns.pop(name, None)
    captured, _ = ran(ip, "%%generate --max-tokens 2 --temperature 0\nName the capital of {country}, near {city}.")
    assert rec.last["messages"][-1]["content"] == "Name the capital of {country}, near Paris."
    warning = [line for line in captured.stderr.splitlines() if "left as written" in line]
    assert len(warning) == 1 and "{country}" in warning[0] and "{city}" not in warning[0], captured.stderr

    captured, _ = ran(ip, "%%generate --max-tokens 2 --temperature 0 --system 'About {topic}.'\nHi {city}.")
    assert "{topic}" in captured.stderr and "left as written" in captured.stderr

    for line in ("--no-interpolate", ""):  # nothing interpolated; every name defined
        body = "Name the capital of {country}." if line else "Name the capital of {city}."
        captured, _ = ran(ip, f"%%generate --max-tokens 2 --temperature 0 {line}\n{body}")
        assert "left as written" not in captured.stderr


# 4. Help that matches the magic -----------------------------------------------------------------------
def test_generate_help_shows_the_cell_magic(ip):
    captured, _ = ran(ip, "%%generate?")
    shown = captured.stdout or "".join(o.data.get("text/plain", "") for o in captured.outputs)
    doc = getdoc(ip.find_cell_magic("generate"))
    for text in (doc, shown):
        assert "%%generate [-m MODEL]" in text
        assert not re.search(r"(?<!%)%generate\b", text), text[:300]


def test_runtime_help_lists_every_subcommand(ip):
    doc = getdoc(ip.find_line_magic("runtime"))
    for action in ACTIONS:
        assert f"%runtime {action}" in doc, action
    for target in USE_TARGETS:
        assert f"%runtime use {target}" in doc, target
    assert "%runtime use dask [ADDRESS]" in doc


def readme_magic_lines() -> list[str]:
    """Every magic line the README shows: code lines that start with `%` (or `NAME = %`), and inline
    code that starts with `%`."""
    found, fenced = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced:
            match = re.match(r"\s*(?:[A-Za-z_]\w*\s*=\s*)?(%%?[A-Za-z_].*)", line)
            if match:
                found.append(match.group(1))
        else:
            found += re.findall(r"`(%%?[A-Za-z_][^`]*)`", line)
    return found


def options_of(rest: str) -> list[str]:
    words = [word.strip("[]|(),") for word in drop_comment(rest).split()]
    return [word.split("=", 1)[0] for word in words if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word)]


def test_readme_options_exist_and_every_magic_documents_its_options(ip):
    magics = our_magics(ip)
    lines = readme_magic_lines()
    checked = set()
    for line in lines:
        name, _, rest = line.lstrip("%").partition(" ")
        name = name.rstrip("?")
        if name not in magics:
            continue  # IPython's own (%load_ext)
        checked.add(name)
        parser = parser_of(magics[name])
        for option in options_of(rest):
            assert option in parser._option_string_actions, f"README: {line!r}: %{name} has no {option}"
        if name == "runtime":
            words = [w for w in drop_comment(rest).split() if not w.startswith("-")]
            if words:
                doc = getdoc(magics[name])
                command = " ".join(words[:2] if words[0] == "use" and len(words) > 1 else words[:1])
                assert command.split()[0] in ACTIONS, line
                assert f"%runtime {command}" in doc, f"README: {line!r}: %runtime? does not list {command!r}"
    assert {"generate", "embed", "runtime", "rerank", "classify", "ner", "ocr", "anomaly"} <= checked, checked
    for name, magic in magics.items():
        doc = getdoc(magic)
        assert f"%{name}" in doc
        for option in parser_of(magic)._option_string_actions:
            assert option in doc, f"%{name}? does not list {option}"


# 7. Small things --------------------------------------------------------------------------------------
def test_lazy_dask_magics_name_the_default_model(ip, runtime):
    dd = pytest.importorskip("dask.dataframe")
    import distributed

    with pytest.raises(ValueError):  # no client: the graph builds, nothing asks a cluster
        distributed.default_client()
    ip.user_ns["ddf"] = dd.from_pandas(pd.DataFrame({"text": TEXTS * 4}), npartitions=2)
    for line, model in (("%embed ddf.text", runtime.default_embedding_model),
                        ("%classify ddf.text --labels sports,politics", MINILM),
                        ("%ner ddf.text", TASKS["ner"].default_model(runtime.config)),
                        ("%ocr ddf.text", TASKS["ocr"].default_model(runtime.config))):
        captured, _ = ran(ip, line)
        assert re.search(rf"^{re.escape(model)} \u00b7 2 partitions \u00b7 lazy", captured.stdout, re.M), \
            (line, captured.stdout)
        assert "default model" not in captured.stdout


def test_one_anomaly_is_one_anomaly(ip):
    rng = np.random.default_rng(0)
    ip.user_ns["payments"] = pd.DataFrame({"amount": np.append(rng.normal(50.0, 5.0, 60), 500.0)})
    captured, _ = ran(ip, "%anomaly payments --contamination 0.01 --column score")
    flagged = int(ip.user_ns["payments"].score_is_anomaly.sum())
    count = re.search(r"(\d+) (anomaly|anomalies) ", captured.stdout)
    assert count and int(count.group(1)) == flagged, captured.stdout
    assert count.group(2) == ("anomaly" if flagged == 1 else "anomalies"), captured.stdout
    assert flagged == 1, "the case this test is about: the one row at 500 is the only anomaly"


def test_readme_column_lines_say_which_columns_they_add(ip, df):
    """A `--column NAME` line returns nothing and adds columns: its comment names them (the columns each
    magic's help promises, NAME and NAME_suffix), and running the %classify line shows it is so."""
    magics = our_magics(ip)
    lines = [line for line in readme_magic_lines() if "--column" in line and "#" in line]
    assert lines
    for line in lines:
        name = line.lstrip("%").split()[0]
        column = re.search(r"--column[ =](\w+)", line).group(1)
        help_text = parser_of(magics[name])._option_string_actions["--column"].help
        columns = [column] + [column + suffix for suffix in re.findall(r"NAME(_\w+)", help_text)]
        comment = line.split(" #", 1)[1]
        said = re.search(r"\badds ([\w, ]+)", comment)
        assert said and set(re.findall(r"\w+", said.group(1))) >= set(columns), f"README: {line!r}: adds {columns}"

    classify = next(line for line in lines if line.startswith("%classify df."))
    before = set(df.columns)
    _, value = ran(ip, classify)
    assert value is None
    assert set(df.columns) - before == {"topic", "topic_score"}
