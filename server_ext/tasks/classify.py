"""`POST universal/v1/classify`: a label and its probability per text.

`{model, input: str or [str], labels?: [str]}` ->
`{id, object: "list", model, data: [{index, label, score, scores: {label: p}}], usage}`.
Without labels a classifier uses its own classes; an embedding or chat model is zero-shot and needs them.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel

from universal_kernel.tasks import classify as classify_task

from .. import protocol as p
from ..errors import Failure
from ..serving import Serving
from . import TaskRequest, TaskUsage, post_handler, serve


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


async def classify(serving: Serving, req: ClassifyRequest) -> ClassifyResponse | Failure:
    def respond(result) -> ClassifyResponse:
        rows = [ClassifyRow(index=i, label=row.label, score=row.score, scores=row.scores)
                for i, row in enumerate(result.rows)]
        return ClassifyResponse(id=p.new_id("classify"), model=result.model, data=rows,
                                usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: classify_task.call(req.input, req.model, req.labels,
                                                                   **req.options()), respond)


ClassifyHandler = post_handler(ClassifyRequest, classify)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{classify_task.PATH}/?", ClassifyHandler)]  # the path the client runtime posts to
