"""The base of every handler of this extension: authentication by key, OpenAI error bodies, writing
values, failures and generation streams.

Every failure on these routes, Jupyter's own authentication failures included, is written as an
OpenAI error body by `write_error`. Every other handler module (handlers.py, hub.py, the tasks' and
the compatibility door's) imports this one, and this one imports none of them.
"""

from __future__ import annotations

import hmac
import json
from http.client import responses
from typing import Any

from jupyter_server.base.handlers import APIHandler
from pydantic import BaseModel
from tornado import web
from tornado.iostream import StreamClosedError

from .errors import Failure, failure, failure_from
from .generation import GenerationJob, Jobs
from .serving import Serving

#: the resource this extension's handlers are authorized against
AUTH_RESOURCE = "universal_kernel"
SERVING_SETTING = "universal_kernel_serving"
JOBS_SETTING = "universal_kernel_jobs"


def _default(value: Any):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE
    _job: GenerationJob | None = None

    @property
    def serving(self) -> Serving:
        return self.settings[SERVING_SETTING]

    async def prepare(self) -> None:
        self._refuse_a_wrong_key()
        await super().prepare()
        limit = self.serving.max_body_size
        if self.request.body and len(self.request.body) > limit:
            raise web.HTTPError(413, f"the request body is larger than the limit of {limit} bytes")

    # Credentials ------------------------------------------------------------------------------
    def _refuse_a_wrong_key(self) -> None:
        """An Authorization header says who the client is: a wrong key is refused (401, invalid_api_key) even
        when the client also holds a valid Jupyter login cookie, as httpx and langchain-openai keep one."""
        header = self.request.headers.get("Authorization")
        expected = self.token
        if header is None or not expected:
            return
        match = self.identity_provider.auth_header_pat.match(header)
        given = match.group(2).strip() if match else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPError(403)  # before any user is set: write_error answers OpenAI's 401

    def set_secure_cookie(self, name, value, *args, **kwargs):
        # A client that authenticates with its key on every request gets no login cookie from these routes;
        # the browser's login (no Authorization header) is unchanged.
        if self.request.headers.get("Authorization"):
            return None
        return super().set_secure_cookie(name, value, *args, **kwargs)

    # Writing ----------------------------------------------------------------------------------
    def send_json(self, value: BaseModel | dict | list, status: int = 200) -> None:
        self.set_status(status)
        if isinstance(value, BaseModel):
            text = value.model_dump_json(exclude_none=False)
        else:
            text = json.dumps(value, default=_default)
        self.finish(text)

    def send_failure(self, fail: Failure) -> None:
        reason = responses.get(fail.status, "Client Closed Request" if fail.status == 499 else "Error")
        self.set_status(fail.status, reason=reason)
        for name, value in fail.headers.items():
            self.set_header(name, value)
        self.finish(fail.json())

    def send(self, value) -> None:
        if isinstance(value, Failure):
            self.send_failure(value)
        else:
            self.send_json(value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """OpenAI error bodies for every HTTP error, never a traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "Error")
        if isinstance(exc, web.HTTPError) and exc.log_message:
            try:
                message = exc.log_message % exc.args if exc.args else exc.log_message
            except (TypeError, ValueError):
                message = exc.log_message
        if status_code == 403 and not getattr(self, "_jupyter_current_user", None):
            # Jupyter answers 403 to a missing or wrong token; an API client expects 401
            fail = failure(401, "a valid Jupyter token is required: send 'Authorization: Bearer <token>'",
                           "authentication_error", code="invalid_api_key")
            self.set_header("WWW-Authenticate", 'Bearer realm="jupyter"')
        elif status_code == 403:
            fail = failure(403, message, "permission_error", code="forbidden")
        elif status_code == 404:
            fail = failure(404, message if exc is not None and message != "Not Found"
                           else f"no such route: {self.request.method} {self.request.path}", code="not_found")
        elif status_code == 413:
            fail = failure(413, message, code="request_too_large")
        elif status_code < 500:
            fail = failure(status_code, message, code=responses.get(status_code, "error").lower().replace(" ", "_"))
        else:
            fail = failure(status_code, "internal error; see the Jupyter server log", "server_error",
                           code="internal_error")
        self.clear_header("Content-Type")
        self.send_failure(fail)

    # Streaming --------------------------------------------------------------------------------
    def on_connection_close(self) -> None:
        if self._job is not None:
            self._job.cancel()
        super().on_connection_close()

    async def send_generation(self, started, stream: bool) -> None:
        """Send a started generation as SSE chunks or as one body; the same events either way."""
        if isinstance(started, Failure):
            return self.send_failure(started)
        jobs: Jobs | None = self.settings.get(JOBS_SETTING)
        if jobs is not None and jobs.closing is not None:  # the server is stopping
            await started.job.aclose()
            return self.send_failure(jobs.closing)
        self._job = started.job  # from now on a closed connection cancels it
        if jobs is not None:
            jobs.add(started.job)  # and a stopping server ends it with an error event
        try:
            failed = await started.job.prime()  # an error before the first token is still an HTTP error
            if failed is not None:
                return self.send_failure(failed)
            if started.job.cancelled:
                return
            if not stream:
                return self.send(await started.collect())
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            named = getattr(started, "sse_event_names", False)  # the Responses API's events
            async for chunk in started.chunks():
                if named and getattr(chunk, "type", None):
                    self.write(f"event: {chunk.type}\n")
                self.write(f"data: {chunk.model_dump_json()}\n\n")
                await self.flush()
            if not named:
                self.write("data: [DONE]\n\n")
            await self.finish(set_content_type="text/event-stream")
        except StreamClosedError:
            started.job.cancel()
        except Exception as exc:
            if not self._headers_written:
                raise  # write_error answers with an OpenAI body
            try:  # the stream has begun: the failure is its last event
                self.write(f"data: {failure_from(exc).json()}\n\ndata: [DONE]\n\n")
                await self.finish(set_content_type="text/event-stream")
            except StreamClosedError:
                pass
        finally:
            try:
                await started.job.aclose()
            finally:
                self._job = None
                if jobs is not None:
                    jobs.discard(started.job)
