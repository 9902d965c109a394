"""`POST universal/v1/documents`: documents parsed into blocks, tables and Markdown (the wire schema:
universal_kernel/tasks/document_wire.py). Only file bytes arrive over HTTP: no path is ever read."""

from __future__ import annotations

from universal_kernel.tasks import document as document_task
from universal_kernel.tasks.document_wire import DocumentRequest, DocumentResponse
from universal_kernel.tasks.image_input import decode_all
from universal_kernel.tasks.wire_base import new_id

from ..errors import Failure
from ..serving import Serving
from . import post_handler, serve

__all__ = ["DocumentHandler", "DocumentRequest", "DocumentResponse", "documents", "routes"]


async def documents(serving: Serving, req: DocumentRequest) -> DocumentResponse | Failure:
    def build():
        return document_task.call(decode_all(req.images), req.model, backend=req.backend, keep_alive=req.keep_alive,
                                  **document_task.limits(serving.runtime.config))

    def respond(result) -> DocumentResponse:
        return DocumentResponse(id=new_id("doc"), model=result.model,
                                data=[document_task.document_to_wire(document) for document in result.documents])

    return await serve(serving.runtime, build, respond, build_off_loop=True)


DocumentHandler = post_handler(DocumentRequest, documents)


def routes() -> list[tuple[str, type]]:
    return [(rf"universal/{document_task.PATH}/?", DocumentHandler)]  # the path the client runtime posts to
