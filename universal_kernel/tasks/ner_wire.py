"""NER's wire schema: `POST v1/ner` `{model, input: str or [str]}` ->
`{id, object: "list", model, data: [{index, entities: [{text, label, start, end, score}]}], usage}`.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from .wire_base import TaskRequest, TaskUsage


class NerRequest(TaskRequest):
    input: Union[str, list[str]]


class NerEntity(BaseModel):
    text: str  # == input[start:end]
    label: str
    start: int  # character offsets into the input
    end: int
    score: float


class NerRow(BaseModel):
    index: int  # the input's position in the request
    entities: list[NerEntity]


class NerResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[NerRow]
    usage: TaskUsage
