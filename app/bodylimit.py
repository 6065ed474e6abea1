"""Request bodies bounded before they reach the disk.

The multipart parser spools uploads over 1 MB to temporary files, and FastAPI parses the whole form before a
route can look at it, so without this a 500 MB upload was written to disk in full before /detect answered 413.
Here a declared Content-Length above the limit is refused before any byte is read, and a chunked body is
counted as it arrives: once it passes the limit the app is told the client went away (it stops parsing) and the
client gets 413 problem+json instead of whatever the app answers to that.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import problem_at


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, upload_bytes: int, allowance_bytes: int) -> None:
        self.app, self.upload_bytes = app, upload_bytes
        self.allowance_bytes, self.max_bytes = allowance_bytes, upload_bytes + allowance_bytes

    def _too_large(self, scope: Scope, seen: str) -> ASGIApp:
        return problem_at(
            413, "Request body too large",
            f"the request body {seen} the limit of {self.max_bytes} bytes: uploads of up to {self.upload_bytes} "
            f"bytes (DFG_MAX_UPLOAD_BYTES) plus {self.allowance_bytes} for the form (DFG_FORM_ALLOWANCE_BYTES)",
            str(scope["path"]), {"Connection": "close"},
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
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
                if received > self.max_bytes:
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
