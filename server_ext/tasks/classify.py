"""`POST universal/v1/classify`: a label and its probability per text (the wire schema:
universal_kernel/tasks/classify_wire.py)."""

from __future__ import annotations

from universal_kernel.tasks import classify as classify_task
from universal_kernel.tasks.classify_wire import ClassifyRequest, ClassifyResponse, ClassifyRow
from universal_kernel.tasks.wire_base import TaskUsage, new_id

from ..errors import Failure
from ..serving import Serving
from . import post_handler, serve

__all__ = ["ClassifyHandler", "ClassifyRequest", "ClassifyResponse", "classify", "routes"]


async def classify(serving: Serving, req: ClassifyRequest) -> ClassifyResponse | Failure:
    def respond(result) -> ClassifyResponse:
        rows = [ClassifyRow(index=i, label=row.label, score=row.score, scores=row.scores)
                for i, row in enumerate(result.rows)]
        return ClassifyResponse(id=new_id("classify"), model=result.model, data=rows,
                                usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: classify_task.call(req.input, req.model, req.labels,
                                                                   **req.options()), respond)


ClassifyHandler = post_handler(ClassifyRequest, classify)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{classify_task.PATH}/?", ClassifyHandler)]  # the path the client runtime posts to
