"""Classify's wire schema: `POST v1/classify` `{model, input: str or [str], labels?: [str]}` ->
`{id, object: "list", model, data: [{index, label, score, scores: {label: p}}], usage}`.
Without labels a classifier uses its own classes; an embedding or chat model is zero-shot and needs them.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from .wire_base import TaskRequest, TaskUsage


class ClassifyRequest(TaskRequest):
    input: Union[str, list[str]]
    labels: list[str] | None = None  # checked by the task's call (non-empty, no duplicates) and per model


class ClassifyRow(BaseModel):
    index: int  # the input's position in the request
    label: str  # the best label
    score: float  # its probability
    scores: dict[str, float]  # every label's probability, best first


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[ClassifyRow]
    usage: TaskUsage
