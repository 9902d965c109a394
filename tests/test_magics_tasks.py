"""%classify, %ner and %rerank in a real InteractiveShell on the real models (all-MiniLM-L6-v2 for
zero-shot classification and reranking, en_core_web_sm for entities), locally and with --server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics

from .conftest import MINILM, TOKEN
from .magics_support import ROOT, ip, run  # noqa: F401

SPACY = "en-core-web-sm"
LABELS = ["sports", "politics", "technology"]
SENTENCES = ["The striker scored twice in the final minutes of the match.",
             None,
             "Angela Merkel met Emmanuel Macron in Berlin on Tuesday."]
INDEX = [10, 20, 30]


@pytest.fixture(scope="module", autouse=True)
def unload_spacy_afterwards(runtime):
    """The session runtime is shared: later tests count its loaded models (the two defaults)."""
    yield
    runtime.unload(SPACY)


@pytest.fixture
def df(ip):
    frame = pd.DataFrame({"text": SENTENCES}, index=INDEX)
    ip.user_ns["df"] = frame
    return frame


def ran(shell, code: str):
    captured, result = run(shell, code)
    assert result.success, result.error_in_exec
    return captured, result.result


def one_line_error(shell, magic: str, line: str) -> str:
    with pytest.raises(UsageError) as info:
        shell.run_line_magic(magic, line)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# %classify ------------------------------------------------------------------------------------
def test_classify_series_keeps_the_index_and_nan_for_missing(ip, runtime, df):
    captured, table = ran(ip, "%classify df.text --labels sports,politics,technology")
    assert list(table.columns) == ["label", "score"] and list(table.index) == INDEX
    assert pd.isna(table.loc[20, "label"]) and np.isnan(table.loc[20, "score"])
    assert captured.stderr.strip() == ("warning: 1 of 3 values are missing or empty (None/NaN/''): "
                                       "their label and score are NaN")
    assert captured.stdout.startswith(f"{MINILM} \u00b7 3 rows \u00b7 ")
    direct = runtime.classify([SENTENCES[0], SENTENCES[2]], MINILM, LABELS)
    assert [table.loc[10, "label"], table.loc[30, "label"]] == [row.label for row in direct.rows]
    np.testing.assert_allclose(table.loc[[10, 30], "score"], [row.score for row in direct.rows], atol=1e-6)

    # quoted labels with spaces; --column writes the labels and their scores into the DataFrame
    captured, nothing = ran(ip, "%classify df['text'] --labels 'sports, politics, technology' --column topic")
    assert nothing is None
    assert df["topic"].tolist()[0::2] == table["label"].tolist()[0::2] and pd.isna(df.loc[20, "topic"])
    np.testing.assert_allclose(df.loc[[10, 30], "topic_score"], table.loc[[10, 30], "score"])


def test_classify_list_and_string(ip, runtime):
    ip.user_ns["items"] = ["A new smartphone chip was announced.", "", "Parliament passed the budget."]
    captured, table = ran(ip, "%classify items --labels sports,politics,technology --out labelled")
    assert table is None
    table = ip.user_ns["labelled"]
    assert list(table.index) == [0, 1, 2] and pd.isna(table.loc[1, "label"])
    assert "1 of 3 values are missing or empty" in captured.stderr
    direct = runtime.classify(["A new smartphone chip was announced.", "Parliament passed the budget."],
                              MINILM, LABELS)
    assert table.loc[[0, 2], "label"].tolist() == [row.label for row in direct.rows]

    _, one = ran(ip, "%classify 'The goalkeeper saved a penalty.' --labels sports,politics,technology")
    assert len(one) == 1 and one.loc[0, "label"] in LABELS and 0 < one.loc[0, "score"] <= 1


def test_classify_long_input_is_chunked_with_a_progress_bar(ip, runtime):
    from types import SimpleNamespace

    from IPython.utils.capture import capture_output

    from universal_kernel.magics.classify import run_classify

    texts = [f"Match report number {i}: the home team won." for i in range(7)]
    ip.user_ns["many"] = pd.Series(texts, index=list("abcdefg"))
    args = SimpleNamespace(labels="sports,politics", model=MINILM, truncate=False, out=None, column=None)
    calls = []

    class Counting:
        where = "local"

        def classify(self, *a, **k):
            calls.append(len(a[0]))
            return runtime.classify(*a, **k)

    with capture_output() as captured:
        table = run_classify(Counting(), ip, "many", args, chunk_rows=3, progress_min_rows=4)
    assert calls == [3, 3, 1]
    assert list(table.index) == list("abcdefg")
    assert any("rows/s" in o.data.get("text/plain", "") for o in captured.outputs)
    whole = runtime.classify(texts, MINILM, ["sports", "politics"])
    np.testing.assert_allclose(table["score"], [row.score for row in whole.rows], atol=1e-6)


# %ner -----------------------------------------------------------------------------------------
def test_ner_long_table_with_row_labels_and_offsets(ip, runtime, df):
    captured, table = ran(ip, f"%ner df.text -m {SPACY}")
    assert list(table.columns) == ["row", "text", "label", "start", "end", "score"]
    assert set(table["row"]) <= {10, 30} and 20 not in set(table["row"])  # the None row has no entities
    assert "1 of 3 values are missing or empty" in captured.stderr and captured.stderr.count("\n") == 1
    for entity in table.itertuples():
        assert df.loc[entity.row, "text"][entity.start:entity.end] == entity.text
    direct = runtime.ner([SENTENCES[0], SENTENCES[2]], SPACY)
    expected = [(row, e.text, e.label, e.start, e.end) for row, entities in zip([10, 30], direct.rows)
                for e in entities]
    assert [tuple(r) for r in table[["row", "text", "label", "start", "end"]].itertuples(index=False)] == expected

    ran(ip, "%ner df.text --column entities")
    assert df.loc[20, "entities"] == []
    assert [e["text"] for e in df.loc[30, "entities"]] == [e.text for e in direct.rows[1]]


def test_ner_list_and_string(ip, runtime):
    ip.user_ns["items"] = ["Barack Obama visited Paris.", float("nan")]
    _, table = ran(ip, "%ner items")
    assert set(table["row"]) == {0}
    _, one = ran(ip, "%ner 'Tim Cook runs Apple in California.'")
    direct = runtime.ner(["Tim Cook runs Apple in California."], SPACY)
    assert one["text"].tolist() == [e.text for e in direct.rows[0]] and set(one["row"]) == {0}
    _, empty = ran(ip, "%ner ['', None]")
    assert empty.empty and list(empty.columns) == ["row", "text", "label", "start", "end", "score"]


# %rerank --------------------------------------------------------------------------------------
def test_rerank_best_first_with_the_series_index(ip, runtime, df):
    ip.user_ns["question"] = "Who scored in the football match?"
    captured, table = ran(ip, "%rerank question df.text")
    assert list(table.columns) == ["index", "document", "score"]
    assert sorted(table["index"]) == [10, 30]  # the None document is left out
    assert "1 of 3 values are missing or empty" in captured.stderr
    assert list(table["score"]) == sorted(table["score"], reverse=True)
    direct = runtime.rerank("Who scored in the football match?", [SENTENCES[0], SENTENCES[2]], MINILM)
    assert table["document"].tolist() == [hit.document for hit in direct.hits]
    np.testing.assert_allclose(table["score"], [hit.score for hit in direct.hits], atol=1e-6)
    for row in table.itertuples(index=False):
        assert df.loc[row.index, "text"] == row.document

    _, top = ran(ip, '%rerank "Who scored in the football match?" df.text --top 1')
    assert top.to_dict("records") == table.head(1).to_dict("records")


def test_rerank_list_and_string(ip):
    ip.user_ns["docs"] = ["Bananas are yellow.", "Python is a programming language.", "Cats purr."]
    _, table = ran(ip, "%rerank 'Which language do programmers use?' docs --top 2")
    assert len(table) == 2 and set(table["index"]) <= {0, 1, 2}
    assert table["document"].tolist() == [ip.user_ns["docs"][i] for i in table["index"]]
    _, one = ran(ip, "%rerank 'fruit {not a field}' 'Bananas are yellow.'")
    assert one["index"].tolist() == [0] and one["document"].tolist() == ["Bananas are yellow."]


# user mistakes --------------------------------------------------------------------------------
def test_user_mistakes_are_one_line_and_load_nothing(ip, runtime, df):
    calls = []

    class Watched:
        where = "local"

        def __getattr__(self, name):
            calls.append(name)
            return getattr(runtime, name)

    magics = get_magics(ip)
    magics.set_local_runtime(Watched())
    loads = runtime.cache.loads
    try:
        assert "given twice" in one_line_error(ip, "classify", "df.text --labels sports,sports")
        assert "labels" in one_line_error(ip, "classify", "df.text --labels ' , '")
        assert "--top" in one_line_error(ip, "rerank", "'query' df.text --top 0")
        assert calls == [] and runtime.cache.loads == loads
    finally:
        magics.set_local_runtime(runtime)
    assert "cannot find entities" in one_line_error(ip, "ner", f"df.text -m {MINILM}")
    assert "needs an expression" in one_line_error(ip, "classify", "--labels a,b")
    assert "takes strings" in one_line_error(ip, "ner", "[1, 2]")


def test_load_ext_is_light_and_help_works():
    code = ("import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
            "ip = InteractiveShell.instance()\nip.run_line_magic('load_ext', 'universal_kernel')\n"
            "from IPython.core.oinspect import getdoc\n"
            "heavy = sorted(m for m in ('pandas', 'torch', 'spacy', 'transformers') if m in sys.modules)\n"
            "doc = getdoc(ip.find_line_magic('rerank'))\n"
            "print(json.dumps([heavy, doc, sorted(ip.magics_manager.magics['line'])]))")
    done = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy, doc, line_magics = json.loads(done.stdout.splitlines()[-1])
    assert heavy == []
    assert "%rerank" in doc and "--top N" in doc
    assert {"rerank", "classify", "ner", "embed", "runtime"} <= set(line_magics)


# --server -------------------------------------------------------------------------------------
def test_server_mode_gives_the_same_results(ip, server, df):
    magics = get_magics(ip)
    magics.remote_runtime(server.url, TOKEN)
    local_classes = ran(ip, "%classify df.text --labels sports,politics,technology")[1]
    captured, remote_classes = ran(ip, "%classify df.text --labels sports,politics,technology --server")
    assert "(server)" in captured.stdout
    assert remote_classes["label"].tolist()[0::2] == local_classes["label"].tolist()[0::2]
    np.testing.assert_allclose(remote_classes["score"], local_classes["score"], atol=1e-4)

    local_entities = ran(ip, "%ner df.text")[1]
    remote_entities = ran(ip, "%ner df.text --server")[1]
    pd.testing.assert_frame_equal(remote_entities.drop(columns="score"), local_entities.drop(columns="score"))

    local_ranking = ran(ip, "%rerank 'football' df.text")[1]
    remote_ranking = ran(ip, "%rerank 'football' df.text --server")[1]
    assert remote_ranking["index"].tolist() == local_ranking["index"].tolist()
    np.testing.assert_allclose(remote_ranking["score"], local_ranking["score"], atol=1e-4)
