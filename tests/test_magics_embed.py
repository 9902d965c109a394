"""%embed in a real InteractiveShell on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from universal_kernel.magics import get_magics
from universal_kernel.magics.embed import split_line

from .conftest import MINILM, SMOLLM
from .magics_support import bundles, ip, run  # noqa: F401


def reference(runtime, texts):
    return runtime.embed(list(texts), MINILM).vectors


def test_dataframe_with_duplicates_nan_none_and_empty_strings(ip, runtime):
    texts = ["a red fox (embed test)", "a blue whale (embed test)", None, "a red fox (embed test)", np.nan, "",
             "a green frog (embed test)"]
    df = pd.DataFrame({"text": texts}, index=[30, 10, 20, 60, 50, 40, 0])
    ip.user_ns["df"] = df
    runtime.embed([""], MINILM)  # other tests may have embedded "": make sure it is cached, so counts are exact
    captured, result = run(ip, "%embed df.text --column emb")
    assert result.success, result.error_in_exec
    assert result.result is None  # stored, not echoed
    assert "warning: 2 of 7 values are missing (None/NaN)" in captured.stderr
    assert captured.stderr.count("\n") == 1
    stats = get_magics(ip).last_embedding
    assert stats["rows"] == 7 and stats["unique"] == 4 and stats["missing"] == 2
    assert stats["computed"] == 3 and stats["cached"] == 1  # duplicates embedded once; "" from the cache
    emb = df["emb"]
    assert list(emb.index) == [30, 10, 20, 60, 50, 40, 0]
    ref = reference(runtime, ["a red fox (embed test)", "a blue whale (embed test)", "", "a green frog (embed test)"])
    np.testing.assert_allclose(emb.loc[30], ref[0], atol=1e-5)
    np.testing.assert_allclose(emb.loc[10], ref[1], atol=1e-5)
    np.testing.assert_allclose(emb.loc[60], ref[0], atol=1e-5)
    np.testing.assert_allclose(emb.loc[40], ref[2], atol=1e-5)
    np.testing.assert_allclose(emb.loc[0], ref[3], atol=1e-5)
    assert np.isnan(emb.loc[20]).all() and np.isnan(emb.loc[50]).all()
    assert emb.loc[30].dtype == np.float32 and emb.loc[30].shape == (384,)

    # the second run on the same texts is served from the cache: the model computes nothing
    run(ip, "%embed df['text'] --out again")
    stats = get_magics(ip).last_embedding
    assert stats["computed"] == 0 and stats["cached"] == 4
    again = ip.user_ns["again"]
    assert again.dtype == np.float32 and again.shape == (7, 384)
    np.testing.assert_array_equal(again[[0, 1, 3, 5, 6]], np.stack(emb.iloc[[0, 1, 3, 5, 6]].to_numpy()))


def test_column_aligns_with_a_filtered_series_index(ip):
    df = pd.DataFrame({"text": ["one (align)", "two (align)", "three (align)"]}, index=["x", "y", "z"])
    ip.user_ns["df"] = df
    run(ip, "%embed df.text --column v")
    ip.user_ns["sub"] = df.iloc[[2, 0]]
    run(ip, "%embed sub['text'] --column w")
    sub = ip.user_ns["sub"]
    np.testing.assert_array_equal(sub.loc["z", "w"], df.loc["z", "v"])
    np.testing.assert_array_equal(sub.loc["x", "w"], df.loc["x", "v"])


def test_list_and_string_and_order(ip, runtime):
    ip.user_ns["items"] = ["zebra (order)", "apple (order)", "mango (order)"]
    _, result = run(ip, "%embed items")
    vectors = result.result
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, reference(runtime, ip.user_ns["items"]), atol=1e-5)
    _, result = run(ip, '%embed "just one string"')
    assert result.result.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(result.result, axis=1), 1.0, atol=1e-5)


def test_no_normalize_and_model_option(ip):
    _, result = run(ip, f'%embed ["longer vectors (raw)"] -m {MINILM} --no-normalize --out raw')
    assert result.success, result.error_in_exec
    assert abs(float(np.linalg.norm(ip.user_ns["raw"][0])) - 1.0) > 1e-3


def test_progress_bar_on_long_inputs(ip):
    magics = get_magics(ip)
    magics.embed_chunk_rows, magics.progress_min_rows = 8, 10
    ip.user_ns["many"] = [f"sentence number {i} (progress)" for i in range(20)] * 2
    captured, result = run(ip, "%embed many --out m")
    assert result.success, result.error_in_exec
    assert magics.last_embedding["progress_updates"] == 3
    progress = [d for d in bundles(captured) if "rows/s" in d.get("text/plain", "")]
    assert progress and "20/20 rows" in progress[-1]["text/plain"] and "<progress" in progress[-1]["text/html"]
    assert ip.user_ns["m"].shape == (40, 384)


def test_all_missing_and_empty_inputs(ip):
    ip.user_ns["nothing"] = [None, None]
    _, result = run(ip, "%embed nothing")
    assert result.result.shape == (2, 384) and np.isnan(result.result).all()
    ip.user_ns["empty"] = []
    _, result = run(ip, "%embed empty")
    assert result.result.shape == (0, 384)


def test_split_line_keeps_expressions_whole():
    assert split_line('df["my col"] --column x') == ('df["my col"]', ["--column", "x"])
    assert split_line("-m M df.text.str.lower() --out v") == ("df.text.str.lower()", ["-m", "M", "--out", "v"])
    assert split_line("[s for s in xs if s != '-m'] --server") == ("[s for s in xs if s != '-m']", ["--server"])


@pytest.mark.parametrize("line, message", [
    ("", "needs an expression"),
    ("undefined_name", "NameError"),
    ("frame", "not a DataFrame"),
    ("[1, 2]", "takes strings"),
    ("42", "not int"),
    ("['a'] --column c", "--column needs EXPR"),
    ("frame.text --column c --out 9x", "--out needs a Python variable name"),
    ("['a'] --bogus", "unrecognized arguments"),
    (f"['a'] -m {SMOLLM}", "cannot embed"),
    ("['a'] -m nowhere-model", "nowhere-model"),
])
def test_usage_errors_are_one_line(ip, line, message):
    ip.user_ns["frame"] = pd.DataFrame({"text": ["a"]})
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("embed", line)
    assert message in str(info.value) and "\n" not in str(info.value)
