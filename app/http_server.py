"""The HTTP server's edges: how long a client may take to send a request, how many connections are served at once,
and which request heads are refused before the application sees them (docs/OPERATIONS.md, "Connections").

``deepfake-guard serve`` runs uvicorn with ``uvicorn_options``. uvicorn bounds the idle time between two requests of
a connection (``timeout_keep_alive``) and the connections and tasks it serves at once (``limit_concurrency``; 503
above), but not the time a client takes to send a request's head or body: 500 connections that sent half a head
were never closed. ``GuardedH11Protocol`` adds both deadlines, answers an oversized head with 431 (uvicorn's h11
protocol answers 400 and closes at once, which a client still sending reads as a connection reset), and refuses
with 400 what a proxy in front could read differently than this server: a Host header that is no host name, two
Host headers, and Content-Length together with Transfer-Encoding (request smuggling, RFC 9112 section 6.1).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.settings import Settings

#: A Host header as RFC 9110 allows it for a server: a host name or IPv4 address, or an IPv6 literal in brackets,
#: then an optional port. No user info (``x@host``), no path, no spaces.
_HOST = re.compile(rb"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
#: How long a refused connection keeps reading (and discarding) what its client still sends, so that the client
#: reads the answer instead of a reset: the kernel resets a connection closed with unread bytes.
LINGER_S = 2.0


def request_head_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request head is refused with 400, or None (names lower-case, as h11 gives them)."""
    hosts = [value for name, value in headers if name == b"host"]
    if len(hosts) > 1:
        return "a request may carry one Host header, got several"
    if hosts and not _HOST.fullmatch(hosts[0]):
        return "the Host header must be a host name or address with an optional port"
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        return "Content-Length and Transfer-Encoding together are refused (the body's length would be ambiguous)"
    return None


class _Refused(h11.RemoteProtocolError):
    pass


class _CheckedConnection(h11.Connection):
    """h11's connection, which also refuses the request heads ``request_head_problem`` names, and remembers the
    status h11 suggests for the last request it could not parse (431 for a head over the size limit)."""

    refusal: tuple[int, str] | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = (exc.error_status_hint, str(exc))
            raise
        if isinstance(event, h11.Request):
            problem = request_head_problem(list(event.headers))
            if problem is not None:
                self.refusal = (400, problem)
                raise _Refused(problem, error_status_hint=400)
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (from the connection's start, or the end of
    the previous response) and for its body (from the end of its head), and refusals that the client can read."""

    header_timeout_s = 10.0
    body_timeout_s = 120.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: _CheckedConnection = _CheckedConnection(h11.SERVER, self.conn._max_incomplete_event_size)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_for: object = None  # the client state the deadline was set in
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return  # refused: read and drop what the client still sends
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _clear(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_for = None, None

    def _watch(self) -> None:
        """Set the deadline of what the client owes now: a request head (IDLE) or its body (SEND_BODY)."""
        state = self.conn.their_state
        if self._deadline_for is state or self._draining or self.transport is None or self.transport.is_closing():
            return
        self._clear()
        if state is h11.IDLE:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._expired, state)
        elif state is h11.SEND_BODY:
            self._deadline = self.loop.call_later(self.body_timeout_s, self._expired, state)
        else:
            return
        self._deadline_for = state

    def _expired(self, state: object) -> None:
        self._deadline, self._deadline_for = None, None
        if self.conn.their_state is not state or self.transport.is_closing():
            return
        if state is h11.IDLE and self.conn.our_state is h11.IDLE:
            # No request is under way, so h11 would not send a response: the bytes of a 408 go out by hand.
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        self.transport.close()  # a body under way: the application sees the client disconnect

    def send_400_response(self, msg: str) -> None:
        """The refusal h11 or ``request_head_problem`` named (431 for an oversized head), then the connection
        drains for ``LINGER_S`` before it closes."""
        status, detail = self.conn.refusal or (400, msg)
        body = (detail.rstrip(".") + ".\n").encode("ascii", "replace")
        reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}.get(status, b"Bad Request")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self._clear()
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run`` for the API (``deepfake-guard serve``)."""
    protocol = type(
        "ConfiguredH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.http_header_timeout_s, "body_timeout_s": settings.http_body_timeout_s},
    )
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "http": protocol,
        "limit_concurrency": settings.http_max_connections,
        "timeout_keep_alive": settings.http_keep_alive_s,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    }
