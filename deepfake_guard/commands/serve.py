from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "serve", help="run the API (with a bundled Redis and worker unless a Redis URL is set)"
    )
    parser.add_argument("--host", default=None, help="bind address (default: DFG_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: DFG_PORT or 8000)")
    parser.add_argument(
        "--workers", type=int, default=None, help="embedded mode: worker processes (default: DFG_EMBEDDED_WORKERS)"
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _check_detectors(settings: Any) -> str | None:
    """What keeps the API from starting with these detectors (a missing folder, a DFG_DEFAULT_MODEL that is not
    there), read from the file names alone; None when nothing does."""
    from models.checkpoint import discover
    from models.zoo import choose_default

    folder = settings.checkpoints_dir
    if not folder.is_dir():
        return f"DFG_CHECKPOINTS_DIR={str(folder)!r} does not exist (or is not a folder)"
    try:
        choose_default([p.stem for p in discover(folder)], settings.default_model)
    except ValueError as exc:
        return str(exc)
    return None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http_server import uvicorn_options
    from app.main import create_app
    from core.settings import get_settings
    from deepfake_guard.embedded import DirectoryInUse, EmbeddedRedis, WorkerSupervisor

    settings = get_settings()
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "embedded_workers": args.workers}.items()
        if v is not None
    }
    settings = settings.model_copy(update=overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _check_detectors(settings)
    if problem:  # one line before anything starts, not a traceback from the API's start-up
        print(f"error: {problem}")
        return 2
    redis: EmbeddedRedis | None = None
    supervisor: WorkerSupervisor | None = None
    if settings.redis_url is None:
        try:
            redis = EmbeddedRedis(settings.embedded_redis_dir).start()
        except DirectoryInUse as exc:  # a second serve on one AOF file would lose jobs (deepfake_guard/embedded.py)
            raise SystemExit(f"deepfake-guard serve: {exc}") from None
        settings = settings.model_copy(update={"redis_url": redis.url})
        env = {
            "DFG_REDIS_URL": redis.url,
            "DFG_CHECKPOINTS_DIR": str(settings.checkpoints_dir.resolve()),
            "DFG_DEVICE": settings.device,
        }
        supervisor = WorkerSupervisor(settings.embedded_workers, env, redis=redis).start()
        logging.getLogger("deepfake_guard").info(
            "embedded mode: Redis at %s, %d worker(s)", redis.url, settings.embedded_workers
        )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with our handler in place: turn it
    # into SystemExit so that the `finally` below still stops the embedded workers and Redis server.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(create_app(settings), **uvicorn_options(settings))  # timeouts and limits: app/http_server.py
    finally:
        if supervisor is not None:
            supervisor.stop()
        if redis is not None:
            redis.stop()
    return 0
