"""Categorical columns for anomaly detectors, encoded by scikit-learn's `ColumnTransformer`.

A DataFrame with non-numeric columns (or rows {column: value} with strings among the values), or a
`schema` that names a categorical kind, is read as a table: each column is `numeric` (standardised),
`onehot` (`OneHotEncoder`; a category not seen in training is all zeros) or `ordinal` (`OrdinalEncoder`,
codes in order of the sorted categories; an unseen one is -1). `label` is upstream LlamaFarm's name for
`ordinal`. Without a schema, numeric columns are numeric and the others one-hot. The encoder is the
first step of the detector's pipeline, so scoring encodes new rows as training did.
"""

from __future__ import annotations

import numbers
import sys

from ..errors import InvalidRequest

KINDS = {"numeric": "numeric", "onehot": "onehot", "ordinal": "ordinal", "label": "ordinal"}


def _pandas():
    import pandas as pd

    return pd


def is_table(data, schema) -> bool:
    """Whether `data` goes through the column encoder: a schema with a categorical kind, or a column of text."""
    if schema and any(KINDS.get(kind) != "numeric" for kind in schema.values()):
        return True
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        return any(not pd.api.types.is_numeric_dtype(data[c]) or pd.api.types.is_bool_dtype(data[c])
                   for c in data.columns)
    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return any(isinstance(value, str) for row in data for value in row.values())
    return False


def _frame(data, param: str):
    pd = _pandas()
    if isinstance(data, pd.DataFrame):
        frame = data.copy()
        frame.columns = [str(c) for c in frame.columns]
        return frame.reset_index(drop=True)
    if not isinstance(data, list) or not data or not all(isinstance(row, dict) for row in data):
        raise InvalidRequest(f"{param} with categorical columns must be a DataFrame or a list of rows "
                             f"{{column: value}}", param=param)
    columns = [str(c) for c in data[0]]
    for i, row in enumerate(data):
        if [str(c) for c in row] != columns:
            raise InvalidRequest(f"{param}[{i}] has columns {list(row)}; every row needs {columns}", param=param)
    return pd.DataFrame([list(row.values()) for row in data], columns=columns)


def kinds_of(frame, schema: dict | None) -> dict[str, str]:
    """Each column's kind: the schema's, else numeric for numbers and onehot for anything else."""
    pd = _pandas()
    schema = dict(schema or {})
    unknown = [c for c in schema if c not in frame.columns]
    if unknown:
        raise InvalidRequest(f"schema names columns the data does not have: {', '.join(map(str, unknown))}",
                             param="schema")
    kinds = {}
    for column in frame.columns:
        given = schema.get(column)
        if given is not None and given not in KINDS:
            raise InvalidRequest(f"schema[{column!r}] is {given!r}; the encodings offered are numeric, onehot and "
                                 f"ordinal (label)", param="schema")
        numeric = pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])
        kinds[column] = KINDS[given] if given is not None else ("numeric" if numeric else "onehot")
    return kinds


def _checked(frame, kinds: dict[str, str], param: str):
    """Numeric columns as float64 (finite), categorical ones as strings; a missing value is refused."""
    import numpy as np

    pd = _pandas()
    out = {}
    for column, kind in kinds.items():
        values = frame[column]
        if values.isna().any():
            raise InvalidRequest(f"{param} has {int(values.isna().sum())} missing values in column {column!r}: "
                                 f"drop or fill those rows first", param=param)
        if kind == "numeric":
            bad = [v for v in values if isinstance(v, (str, bool)) or not isinstance(v, (numbers.Real, np.number))]
            if bad:
                raise InvalidRequest(f"{param} column {column!r} is numeric in the schema but holds {bad[0]!r}",
                                     param=param)
            numbers_ = values.astype(np.float64)
            if not np.isfinite(numbers_).all():
                raise InvalidRequest(f"{param} column {column!r} has infinite values", param=param)
            out[column] = numbers_
        else:
            out[column] = values.astype(str)
    return pd.DataFrame(out, columns=list(kinds))


def read_table(data, schema: dict | None, param: str = "data"):
    """(frame, kinds) for fitting."""
    frame = _frame(data, param)
    if frame.empty:
        raise InvalidRequest(f"{param} has no rows", param=param)
    kinds = kinds_of(frame, schema)
    return _checked(frame, kinds, param), kinds


def read_for(data, kinds: dict[str, str], name: str, param: str = "data"):
    """New rows for a detector fitted on a table: the same columns (any order), encoded as training was."""
    frame = _frame(data, param)
    if set(frame.columns) != set(kinds) or len(frame.columns) != len(kinds):
        missing = [c for c in kinds if c not in frame.columns]
        extra = [c for c in frame.columns if c not in kinds]
        raise InvalidRequest(f"data's columns do not match detector {name!r}: it was fitted on {list(kinds)}; "
                             f"missing {missing}, unexpected {extra}", param=param)
    return _checked(frame[list(kinds)], kinds, param)


def encoder(kinds: dict[str, str]):
    """The ColumnTransformer for these kinds (dense output, columns in kind order)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    groups = {kind: [c for c, k in kinds.items() if k == kind] for kind in ("numeric", "onehot", "ordinal")}
    parts = []
    if groups["numeric"]:
        parts.append(("numeric", StandardScaler(), groups["numeric"]))
    if groups["onehot"]:
        parts.append(("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False), groups["onehot"]))
    if groups["ordinal"]:
        parts.append(("ordinal", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                      groups["ordinal"]))
    return ColumnTransformer(parts, sparse_threshold=0)
