"""Who may call the API: API keys (``Authorization: Bearer <key>``), per-key rate limits, trusted hosts and
browser origins, checked by one ASGI middleware before any route reads the request body.

Keys are configured as sha256 hex digests (DFG_API_KEYS, DFG_API_KEYS_FILE; ``deepfake-guard hash-key`` makes
them), never as keys, and a presented key is compared as its digest, in constant time, against every digest.
Nothing here logs a key. The digest's first 16 hex digits name the key's *owner*: its jobs and Idempotency-Keys
carry it (app/jobs.py), so another key cannot see them. With no keys configured everyone is the one owner
``public`` and no limit applies (local use). The routes left open, and why, are in README "Safe to expose".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from contextvars import ContextVar
from pathlib import Path
from urllib.parse import urlsplit

import anyio.to_thread
from redis import Redis
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import limits
from app.errors import ServiceUnavailable, problem_at, redis_problem_detail
from core.settings import Settings

log = logging.getLogger("deepfake_guard.api")

PUBLIC_OWNER = "public"
#: Paths answered without a key: probes (/healthz, /readyz), the Prometheus scrape (/metrics: it reveals counts,
#: never a job or an image), the page and the API docs (static files; every call they make needs a key).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/favicon.ico", "/docs", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
#: Methods a browser sends cross-origin without asking first (a form POST): refused from foreign origins.
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_owner: ContextVar[str] = ContextVar("dfg_owner", default=PUBLIC_OWNER)


def current_owner() -> str:
    """The owner of the request being handled (set by ``AccessMiddleware``; ``public`` without keys)."""
    return _owner.get()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(digest: str) -> str:
    return digest[:16]


def load_key_digests(settings: Settings) -> frozenset[str]:
    """DFG_API_KEYS plus the digests in DFG_API_KEYS_FILE; a bad line or an empty file stops the start."""
    digests = set(settings.api_key_list)
    path: Path | None = settings.api_keys_file
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"DFG_API_KEYS_FILE={str(path)!r} cannot be read: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            value = line.split("#", 1)[0].strip().lower()
            if not value:
                continue
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(
                    f"DFG_API_KEYS_FILE={str(path)!r} line {number}: not a sha256 hex digest "
                    "(`deepfake-guard hash-key` prints one)"
                )
            digests.add(value)
        if not digests:
            raise ValueError(f"DFG_API_KEYS_FILE={str(path)!r} holds no key digest: no request could be answered")
    return frozenset(digests)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def host_allowed(host: str, trusted: list[str]) -> bool:
    """Whether a Host header (``name`` or ``name:port``) is trusted; ``*.example.org`` matches its subdomains."""
    if "*" in trusted:
        return True
    name = urlsplit(f"//{host}").hostname or ""
    return any(name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in trusted)


class AccessMiddleware:
    """Host, origin, API key and rate limit, in that order, each refused as problem+json before the body is read.

    Pure ASGI: the owner it sets (a context variable, and ``scope["state"]["owner"]``) is seen by the routes and by
    the threads they start."""

    def __init__(self, app: ASGIApp, settings: Settings, digests: frozenset[str], app_state: object) -> None:
        self.app, self.settings, self.digests, self.state = app, settings, digests, app_state
        self.trusted = settings.trusted_host_list
        self.origins = frozenset(settings.cors_origin_list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path = str(scope["path"])
        refusal = self._refuse_host_or_origin(scope, headers)
        owner = PUBLIC_OWNER
        if refusal is None and self.digests and not is_open(path):
            digest = self._digest(headers)
            if digest is None:
                refusal = problem_at(
                    401, "Unauthorized", f"{scope['method']} {path} needs an API key: send Authorization: Bearer <key>",
                    path, {"WWW-Authenticate": 'Bearer realm="deepfake-guard"'},
                )  # fmt: skip
            else:
                owner = owner_of(digest)
                refusal = await self._rate_limit(owner, path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner
        token = _owner.set(owner)
        try:
            await self.app(scope, receive, send)
        finally:
            _owner.reset(token)

    def _refuse_host_or_origin(self, scope: Scope, headers: Headers) -> Response | None:
        path = str(scope["path"])
        host = headers.get("host", "")
        if not host_allowed(host, self.trusted):
            return problem_at(400, "Untrusted host", f"Host {host[:100]!r} is not in DFG_TRUSTED_HOSTS", path)
        origin = headers.get("origin")
        if origin is not None and scope["method"] in _UNSAFE:
            same = urlsplit(origin).netloc.lower() == host.lower()
            if not same and origin.rstrip("/") not in self.origins:
                return problem_at(
                    403, "Forbidden origin",
                    f"a page at {origin[:100]!r} may not call this API (DFG_CORS_ORIGINS lists the origins that may)",
                    path,
                )  # fmt: skip
        return None

    def _digest(self, headers: Headers) -> str | None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = hash_key(key.strip())
        found = None
        for digest in self.digests:  # every digest compared, in constant time: the timing tells nothing
            if hmac.compare_digest(presented, digest):
                found = digest
        return found

    async def _rate_limit(self, owner: str, path: str) -> Response | None:
        conn: Redis | None = getattr(self.state, "redis", None)
        if conn is None:
            return None  # no Redis configured: the routes that need it answer 503 themselves
        try:
            wait = await anyio.to_thread.run_sync(limits.take_token, conn, self.settings, owner)
        except RedisError as exc:
            detail = redis_problem_detail(exc, self.settings.redis_url)
            log.warning("rate limit of %s not checked: %s", owner, detail)
            return problem_at(
                503, ServiceUnavailable.title, detail, path, {"Retry-After": str(self.settings.retry_after_s)}
            )
        if wait <= 0:
            return None
        return problem_at(
            429, "Too many requests",
            f"this API key made more than {self.settings.rate_limit_burst} requests at once or "
            f"{self.settings.rate_limit_per_min} a minute; retry in {limits.retry_after(wait)} s",
            path, {"Retry-After": limits.retry_after(wait)},
        )  # fmt: skip
