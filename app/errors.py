"""Domain errors and their one mapping to HTTP (RFC 9457 ``application/problem+json``).

Each handler names a specific exception type; there is deliberately no catch-all that would hide
the cause of an unexpected failure.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from models.images import EmptyImage, ImageError, ImageTooLarge, InvalidImage, UnsupportedImage

PROBLEM_JSON = "application/problem+json"

log = logging.getLogger("deepfake_guard.api")


class ProblemError(Exception):
    """An error with an HTTP status and a human-readable detail."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class UnknownModel(ProblemError):
    status = 404
    title = "Unknown model"


class InvalidParameter(ProblemError):
    status = 422
    title = "Invalid parameter"


class JobNotFound(ProblemError):
    status = 404
    title = "Job not found"


class JobNotReady(ProblemError):
    status = 409
    title = "Job has no result yet"


class AuditNotFound(ProblemError):
    status = 404
    title = "Audit not found"


class AuditNotReady(ProblemError):
    status = 404
    title = "Audit report not ready"


class QueueFull(ProblemError):
    status = 503
    title = "Queue full"


class ServiceUnavailable(ProblemError):
    status = 503
    title = "Service unavailable"


class TooManyRequests(ProblemError):
    status = 429
    title = "Too many requests"


class IdempotencyConflict(ProblemError):
    status = 409
    title = "Idempotency-Key reused with a different request"


def applicable_params(method: str, given: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """The parameters a request set (not None), refusing any that ``method`` does not take."""
    chosen = {k: v for k, v in given.items() if v is not None}
    stray = sorted(set(chosen) - allowed)
    if stray:
        raise InvalidParameter(f"parameters {stray} do not apply to method={method!r} (it takes {sorted(allowed)})")
    return chosen


_IMAGE_STATUS: dict[type[ImageError], tuple[int, str]] = {
    EmptyImage: (422, "Empty upload"),
    ImageTooLarge: (413, "Image too large"),
    UnsupportedImage: (415, "Unsupported image"),
    InvalidImage: (422, "Invalid image"),
}


def problem(
    status: int, title: str, detail: str, request: Request, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return problem_at(status, title, detail, request.url.path, headers, **extra)


def problem_at(
    status: int, title: str, detail: str, path: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response for ``path``; the ASGI middlewares (app/auth.py, app/bodylimit.py) answer with it
    before any route, hence before the exception handlers below, run."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": path, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redis_problem_detail(exc: RedisError, redis_url: str | None) -> str:
    """What went wrong with Redis, for a client: redis-py's own message, with any credentials of the URL masked."""
    message = str(exc) or type(exc).__name__
    secrets: set[str] = set()
    if redis_url:
        parts = urlsplit(redis_url)
        if parts.password:
            secrets.add(parts.password)
        secrets.update(parse_qs(parts.query).get("password", []))
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        message = message.replace(secret, "***")
    message = _URL_USERINFO.sub("***@", message)  # any other URL with user:password@ in it
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):  # AuthenticationError and BusyLoadingError too
        return f"Redis is not reachable: {message}"
    return f"Redis failed: {message}"


def _format_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header", "path", "form"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")  # pydantic's prefix for a validator's own
        value = err.get("input")
        shown = "" if isinstance(value, (bytes, dict)) or value is None else f" (got {str(value)[:80]!r})"
        parts.append(f"{loc or 'request'}: {msg}{shown}")
        errors.append({"field": loc, "message": msg})
    return "; ".join(parts), errors


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, request, exc.headers, **exc.extra)

    @app.exception_handler(ImageError)
    async def _image(request: Request, exc: ImageError) -> JSONResponse:
        status, title = next((v for k, v in _IMAGE_STATUS.items() if isinstance(exc, k)), (422, "Invalid image"))
        return problem(status, title, str(exc), request)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        # Redis down, restarting, loading its AOF or too slow (DFG_REDIS_TIMEOUT_S): the client may retry.
        settings = request.app.state.settings
        detail = redis_problem_detail(exc, settings.redis_url)
        log.warning("%s %s: 503, %s", request.method, request.url.path, detail)
        return problem(503, ServiceUnavailable.title, detail, request, {"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _format_validation(exc)
        return problem(422, "Invalid request", detail, request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first matching route's methods; a path may have several
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return problem(
            exc.status_code,
            str(exc.detail),
            f"{request.method} {request.url.path}: {exc.detail}",
            request,
            headers,
        )


def allowed_methods(app: FastAPI, scope: Mapping[str, Any]) -> list[str]:
    """Every method some route of ``app`` serves at the request's path.
    The routes are the API routers' own (``app.state.api_routes``, set by ``app.main.create_app``)."""
    methods: set[str] = set()
    for route in getattr(app.state, "api_routes", ()):
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; `detail` names the problem and the offending value.",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string", "example": "Invalid parameter"},
        "status": {"type": "integer", "example": 422},
        "detail": {"type": "string", "example": "eps must be in (0, 1], got 2.0"},
        "instance": {"type": "string", "example": "/attack"},
        "errors": {
            "type": "array",
            "description": "request validation errors only: one per field",
            "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}},
        },
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for a route's error statuses, in the media type the handlers above really send."""
    meaning = {
        400: "Malformed request (a multipart body that cannot be parsed, a Host header not in DFG_TRUSTED_HOSTS)",
        401: "No valid API key (`Authorization: Bearer <key>`; only when DFG_API_KEYS or DFG_API_KEYS_FILE is set)",
        403: "A cross-origin request from an origin not in DFG_CORS_ORIGINS",
        429: "The API key's rate or queued-job limit is reached (with Retry-After)",
        404: "Unknown model or job",
        409: "Conflict (Idempotency-Key reused with another request; job has no image)",
        413: "Upload or image too large",
        415: "Unsupported image format",
        422: "Invalid image or parameter",
        503: "Queue full or Redis unreachable (with Retry-After)",
    }
    return {
        status: {"description": meaning[status], "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}}
        for status in statuses
    }
