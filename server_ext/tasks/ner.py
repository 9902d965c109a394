"""`POST universal/v1/ner`: the named entities of each text, with character offsets into it.

`{model, input: str or [str]}` ->
`{id, object: "list", model, data: [{index, entities: [{text, label, start, end, score}]}], usage}`.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from universal_kernel.tasks import ner as ner_task

from .. import protocol as p
from ..errors import Failure
from ..serving import Serving
from . import TaskRequest, TaskUsage, post_handler, serve


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


async def ner(serving: Serving, req: NerRequest) -> NerResponse | Failure:
    def respond(result) -> NerResponse:
        rows = [NerRow(index=i, entities=[NerEntity(text=e.text, label=e.label, start=e.start, end=e.end,
                                                    score=e.score) for e in entities])
                for i, entities in enumerate(result.rows)]
        return NerResponse(id=p.new_id("ner"), model=result.model, data=rows, usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: ner_task.call(req.input, req.model, **req.options()), respond)


NerHandler = post_handler(NerRequest, ner)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{ner_task.PATH}/?", NerHandler)]  # the path the client runtime posts to
