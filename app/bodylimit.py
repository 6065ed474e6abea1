"""Request bodies bounded before they reach the disk.

The multipart parser spools uploads over 1 MB to temporary files, and FastAPI parses the whole form before a
route can look at it, so without this a 500 MB upload was written to disk in full before /detect answered 413.
Here a declared Content-Length above the limit is refused before any byte is read, and a chunked body is
counted as it arrives: once it passes the limit the app is told the client went away (it stops parsing) and the
client gets 413 problem+json instead of whatever the app answers to that.

One route may take more than DFG_MAX_UPLOAD_BYTES: ``POST /audits``, a zip of a data set (DFG_AUDIT_MAX_BYTES).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_at


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, upload_bytes: int, allowance_bytes: int,
        route_bytes: Mapping[tuple[str, str], tuple[int, str]] | None = None,
    ) -> None:  # fmt: skip
        self.app, self.upload_bytes = app, upload_bytes
        self.allowance_bytes, self.max_bytes = allowance_bytes, upload_bytes + allowance_bytes
        #: (method, path) -> (upload bytes, the setting's name) of the routes with a limit of their own.
        self.route_bytes = dict(route_bytes or {})

    def _limits(self, scope: Scope) -> tuple[int, str]:
        return self.route_bytes.get((str(scope.get("method", "")), str(scope["path"])),
                                    (self.upload_bytes, "DFG_MAX_UPLOAD_BYTES"))  # fmt: skip

    def _too_large(self, scope: Scope, seen: str) -> ASGIApp:
        upload, setting = self._limits(scope)
        return problem_at(
            413, "Request body too large",
            f"the request body {seen} the limit of {upload + self.allowance_bytes} bytes: uploads of up to {upload} "
            f"bytes ({setting}) plus {self.allowance_bytes} for the form (DFG_FORM_ALLOWANCE_BYTES)",
            str(scope["path"]), {"Connection": "close"},
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self._limits(scope)[0] + self.allowance_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._too_large(scope, f"declares {int(declared)} bytes, above")(scope, receive, send)
            return
        received = 0
        overflow = False
        started = False

        async def counted() -> Message:
            nonlocal received, overflow
            if overflow:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    overflow = True  # the chunk is dropped, not handed on: nothing past the limit is parsed
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if overflow and not started:
                return  # the app's answer to a "disconnected" client; the 413 below is sent instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        finally:
            if overflow and not started:
                await self._too_large(scope, "passed")(scope, receive, send)
