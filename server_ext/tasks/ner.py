"""`POST universal/v1/ner`: the named entities of each text, with character offsets into it (the wire
schema: universal_kernel/tasks/ner_wire.py)."""

from __future__ import annotations

from universal_kernel.tasks import ner as ner_task
from universal_kernel.tasks.ner_wire import NerEntity, NerRequest, NerResponse, NerRow
from universal_kernel.tasks.wire_base import TaskUsage, new_id

from ..errors import Failure
from ..serving import Serving
from . import post_handler, serve

__all__ = ["NerHandler", "NerRequest", "NerResponse", "ner", "routes"]


async def ner(serving: Serving, req: NerRequest) -> NerResponse | Failure:
    def respond(result) -> NerResponse:
        rows = [NerRow(index=i, entities=[NerEntity(text=e.text, label=e.label, start=e.start, end=e.end,
                                                    score=e.score) for e in entities])
                for i, entities in enumerate(result.rows)]
        return NerResponse(id=new_id("ner"), model=result.model, data=rows, usage=TaskUsage.of(result.prompt_tokens))

    return await serve(serving.runtime, lambda: ner_task.call(req.input, req.model, **req.options()), respond)


NerHandler = post_handler(NerRequest, ner)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{ner_task.PATH}/?", NerHandler)]  # the path the client runtime posts to
