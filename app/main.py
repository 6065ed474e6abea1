"""The FastAPI application. Heavy objects (detectors, Redis client) are created in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from redis import Redis

from app.auth import AccessMiddleware, is_open, load_key_digests
from app.bodylimit import BodyLimitMiddleware
from app.detection import DetectionService
from app.errors import install_error_handlers, problem_responses
from app.metrics import ApiMetrics, HttpMetricsMiddleware, RedisCollector
from app.pixels import PixelGate
from app.routes import attack, audits, detect, health, jobs, methods, metrics, page, purify
from core.settings import Settings, get_settings
from models.zoo import Zoo, choose_default, resolve_device

log = logging.getLogger("deepfake_guard.api")


def package_version() -> str:
    """The installed distribution's version (pyproject.toml); a source tree that was never installed says so."""
    try:
        return version("deepfake-guard")
    except PackageNotFoundError:
        return "0+unknown"


def redis_client(settings: Settings) -> Redis | None:
    """The API's Redis client. Bounded waits: an unreachable or black-holed Redis costs a request at most
    ``redis_timeout_s`` seconds (then 503 + Retry-After, app/errors.py), never a hung worker thread."""
    if settings.redis_url is None:
        return None
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
    )


def document_guards(router: APIRouter) -> None:
    """The answers of the middlewares in front of the routes (app/auth.py, app/bodylimit.py) and of a multipart
    body that cannot be parsed (400), in the OpenAPI entry of every route they can come from."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        statuses = [400]
        if not is_open(route.path):
            statuses += [401, 403, 429]
        if (route.methods or set()) & {"POST", "PUT", "PATCH"}:
            statuses.append(413)
        route.responses = {**problem_responses(*statuses), **route.responses}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = resolve_device(settings.device)
        zoo = Zoo.from_directory(settings.checkpoints_dir, device)
        default, why = choose_default(zoo.names(), settings.default_model)
        log.info("loaded detectors %s on %s; %s", zoo.names(), device, why)
        app.state.detection = DetectionService(
            zoo, default, max_batch=settings.detect_max_batch, precision=settings.detect_precision,
            attack_threads=settings.sync_attack_threads,
        )  # fmt: skip
        app.state.detection.batcher.on_batch = app.state.metrics.observe_detect_batch
        app.state.redis = redis_client(settings)
        try:
            yield
        finally:
            app.state.detection.close()
            if app.state.redis is not None:
                app.state.redis.close()

    app = FastAPI(
        title="deepfake-guard",
        version=package_version(),
        summary="Detect deepfake images, red-team the detectors, and purify adversarial inputs.",
        lifespan=lifespan,
        docs_url=None,  # served from the package instead of a CDN: app/routes/page.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics()
    app.state.metrics.registry.register(RedisCollector(app.state))
    # Innermost first: the body limit, then access (host, origin, key, rate; before any body is read), then CORS
    # (a preflight needs no key), then the metrics, which count every answer, refusals included.
    app.add_middleware(
        BodyLimitMiddleware, upload_bytes=settings.max_upload_bytes, allowance_bytes=settings.form_allowance_bytes,
        route_bytes={("POST", "/audits"): (settings.audit_max_bytes, "DFG_AUDIT_MAX_BYTES")},
    )  # fmt: skip
    app.add_middleware(AccessMiddleware, settings=settings, digests=load_key_digests(settings), app_state=app.state)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Idempotency-Key"], expose_headers=["Location", "Retry-After"],
        )  # fmt: skip
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics, router_app=app)
    app.state.pixel_gate = PixelGate(
        settings.pixels_in_flight, wait_s=settings.pixels_wait_s, retry_after_s=settings.retry_after_s
    )
    install_error_handlers(app)
    routers = (
        health.router, detect.router, attack.build_router(), purify.build_router(), jobs.router, metrics.router,
        methods.router, audits.build_router(),
    )  # fmt: skip
    for router in routers:
        document_guards(router)
        app.include_router(router)
    app.state.api_routes = [route for router in routers for route in router.routes]  # the 405's Allow header
    page.install(app)
    multipart_without_null(app)
    if settings.keys_required:
        bearer_security(app)
    return app


#: The name of the API-key scheme in the OpenAPI document (what Swagger's Authorize button offers).
SECURITY_SCHEME = "apiKey"


def bearer_security(app: FastAPI) -> None:
    """With API keys on, declare them in the OpenAPI document: an HTTP bearer scheme (``Authorization: Bearer
    <key>``, app/auth.py), required by every operation whose path is not open. Swagger UI (``/docs``) then offers
    its Authorize button and sends the key with each request it tries."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`deepfake-guard hash-key` makes its digest for DFG_API_KEYS).",
            }
        }
        for path, item in schema.get("paths", {}).items():
            if not is_open(path):
                for operation in item.values():
                    operation["security"] = [{SECURITY_SCHEME: []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def multipart_without_null(app: FastAPI) -> None:
    """Document optional form fields as optional, not nullable: a multipart body has no null (a field is sent with
    a value or left out), so ``{"type": "null"}`` in an ``anyOf`` only invites clients and schemathesis to send the
    text ``null``, which is no value of the field and is a 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI's, which it also caches in app.openapi_schema: edited in place
        forms = {
            op["requestBody"]["content"]["multipart/form-data"]["schema"].get("$ref", "").rsplit("/", 1)[-1]
            for item in schema.get("paths", {}).values()
            for op in item.values()
            if "multipart/form-data" in op.get("requestBody", {}).get("content", {})
        }
        for name in forms:
            for prop in schema["components"]["schemas"].get(name, {}).get("properties", {}).values():
                if "anyOf" in prop:
                    prop["anyOf"] = [s for s in prop["anyOf"] if s != {"type": "null"}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
