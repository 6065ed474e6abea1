"""The jobs API: status, result image and cancellation of queued jobs, and the helper that queues one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from redis import Redis
from starlette.concurrency import run_in_threadpool

from app import jobs
from app.auth import PUBLIC_OWNER, current_owner
from app.deps import get_app_settings, get_redis
from app.errors import problem_responses
from app.schemas import JobAccepted, JobCancelled, JobInfo
from core.job_plan import JobPlan
from core.settings import Settings

router = APIRouter(tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Same key and same request: the same job comes back."),
]


async def queue_job(
    response: Response,
    conn: Redis,
    settings: Settings,
    *,
    func: str,
    kind: str,
    image: bytes,
    params: dict[str, Any],
    idempotency_key: str | None,
    plan: JobPlan | None = None,
) -> JobAccepted:
    """Queue a job (``jobs.enqueue``, in the queue of its cost ``plan``) for the request's API key (app/auth.py) and
    set the response: 202 + Location, or 200 for an idempotent replay."""
    owner = current_owner()
    # Redis calls block: off the event loop, so a slow Redis (up to DFG_REDIS_TIMEOUT_S) stalls only this request.
    job, created = await run_in_threadpool(
        lambda: jobs.enqueue(
            conn,
            settings,
            func=func,
            kind=kind,
            image=image,
            params=params,
            idempotency_key=idempotency_key,
            owner=owner,
            limit_owner=settings.keys_required,
            plan=plan,
        )
    )
    location = f"/jobs/{job.id}"
    response.headers["Location"] = location
    response.status_code = 202 if created else 200
    return JobAccepted(id=job.id, status=str(job.get_status(refresh=False).value), location=location)


def request_owner(request: Request) -> str:
    """The API key's owner id set by app/auth.py (``public`` without keys)."""
    return str(getattr(request.state, "owner", PUBLIC_OWNER))


Owner = Annotated[str, Depends(request_owner)]


@router.get(
    "/jobs/{job_id}",
    response_model=JobInfo,
    summary="Status, progress and result of a job",
    responses=problem_responses(404, 422, 503),
)
def get_job(
    job_id: str, owner: Owner, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> JobInfo:
    return jobs.describe(jobs.fetch(conn, settings, job_id, owner), settings)


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **problem_responses(404, 409, 422, 503)},
    summary="The job's output image (PNG)",
)
def get_result(
    job_id: str, owner: Owner, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> Response:
    job = jobs.fetch(conn, settings, job_id, owner)
    return Response(jobs.result_png(conn, job), media_type="image/png")


@router.delete(
    "/jobs/{job_id}",
    response_model=JobCancelled,
    summary="Cancel a queued job or stop a running one",
    responses={
        202: {"description": "The job is running; its worker stops it within seconds", "model": JobCancelled},
        **problem_responses(404, 422, 503),
    },
)
def delete_job(
    job_id: str,
    response: Response,
    owner: Owner,
    settings: Settings = Depends(get_app_settings),
    conn: Redis = Depends(get_redis),
) -> JobCancelled:
    job = jobs.fetch(conn, settings, job_id, owner)
    status = jobs.cancel(conn, settings, job)
    if status == "started":
        response.status_code = 202  # the worker stops it within seconds; poll GET /jobs/{id}
    return JobCancelled(id=job.id, status=status)
