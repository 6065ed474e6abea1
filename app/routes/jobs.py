from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Response, UploadFile
from redis import Redis
from starlette.concurrency import run_in_threadpool

from app import jobs
from app.deps import get_app_settings, get_pixel_gate, get_redis
from app.errors import InvalidParameter, applicable_params, problem_responses
from app.pixels import PixelGate, declared_pixels
from app.schemas import JobAccepted, JobCancelled, JobInfo
from app.uploads import form_fields, read_image
from core import keys
from core.settings import Settings

router = APIRouter(tags=["jobs"])

#: The form fields of POST /purify (anything else is refused: app.uploads.form_fields).
PURIFY_FIELDS = frozenset(
    {"file", "method", "preset", "max_iterations", "stop", "seed", "quality", "kernel_size", "bits"}
)

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
) -> JobAccepted:
    """Queue a job (``jobs.enqueue``) and set the response: 202 + Location, or 200 for an idempotent replay."""
    # Redis calls block: off the event loop, so a slow Redis (up to DFG_REDIS_TIMEOUT_S) stalls only this request.
    job, created = await run_in_threadpool(
        lambda: jobs.enqueue(
            conn, settings, func=func, kind=kind, image=image, params=params, idempotency_key=idempotency_key
        )
    )
    location = f"/jobs/{job.id}"
    response.headers["Location"] = location
    response.status_code = 202 if created else 200
    return JobAccepted(id=job.id, status=str(job.get_status(refresh=False).value), location=location)


@router.post(
    "/purify",
    response_model=JobAccepted,
    status_code=202,
    summary="Queue a purification job",
    dependencies=[Depends(form_fields(PURIFY_FIELDS))],
    responses={
        200: {"description": "The job an earlier request with the same Idempotency-Key created", "model": JobAccepted},
        **problem_responses(409, 413, 415, 422, 503),
    },
)
async def purify(
    response: Response,
    file: Annotated[UploadFile, File(description="The image to purify.")],
    method: Annotated[Literal["dip", "jpeg", "median", "bitdepth"], Form()] = "dip",
    preset: Annotated[
        Literal["paper", "default", "early"] | None,
        Form(description="DIP preset (docs/PURIFICATION.md); default: default."),
    ] = None,
    max_iterations: Annotated[int | None, Form(ge=1, description="DIP iteration cap (preset's if unset).")] = None,
    stop: Annotated[Literal["fixed", "auto"] | None, Form(description="DIP stopping rule (preset's if unset).")] = None,
    seed: Annotated[int | None, Form(ge=0, le=2**31 - 1, description="DIP seed; default 0.")] = None,
    quality: Annotated[int | None, Form(ge=1, le=95, description="JPEG quality (method=jpeg).")] = None,
    kernel_size: Annotated[int | None, Form(ge=3, le=15, description="Median window, odd (method=median).")] = None,
    bits: Annotated[int | None, Form(ge=1, le=8, description="Bits per channel (method=bitdepth).")] = None,
    idempotency_key: IdempotencyKey = None,
    settings: Settings = Depends(get_app_settings),
    conn: Redis = Depends(get_redis),
    gate: PixelGate = Depends(get_pixel_gate),
) -> JobAccepted:
    if max_iterations is not None and max_iterations > settings.max_dip_iterations:
        raise InvalidParameter(f"max_iterations={max_iterations} exceeds the limit of {settings.max_dip_iterations}")
    given = {
        "preset": preset,
        "seed": seed,
        "max_iterations": max_iterations,
        "stop": stop,
        "quality": quality,
        "kernel_size": kernel_size,
        "bits": bits,
    }
    allowed = {
        "dip": {"preset", "seed", "max_iterations", "stop"},
        "jpeg": {"quality"},
        "median": {"kernel_size"},
        "bitdepth": {"bits"},
    }
    params: dict[str, Any] = {"method": method, **applicable_params(method, given, allowed[method])}
    if kernel_size is not None and kernel_size % 2 == 0:
        raise InvalidParameter(f"kernel_size must be odd, got {kernel_size}")
    async with gate.hold(await declared_pixels([file])):  # decoded only to be checked, then dropped
        data, _ = await read_image(file, settings)
    if method == "dip":
        params.update(preset=preset or "default", seed=seed or 0)
    return await queue_job(
        response,
        conn,
        settings,
        func=keys.PURIFY_FUNC,
        kind="purify",
        image=data,
        params=params,
        idempotency_key=idempotency_key,
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobInfo,
    summary="Status, progress and result of a job",
    responses=problem_responses(404, 422, 503),
)
def get_job(job_id: str, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)) -> JobInfo:
    return jobs.describe(jobs.fetch(conn, settings, job_id), settings)


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **problem_responses(404, 409, 422, 503)},
    summary="The job's output image (PNG)",
)
def get_result(
    job_id: str, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> Response:
    job = jobs.fetch(conn, settings, job_id)
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
    job_id: str, response: Response, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> JobCancelled:
    job = jobs.fetch(conn, settings, job_id)
    status = jobs.cancel(conn, settings, job)
    if status == "started":
        response.status_code = 202  # the worker stops it within seconds; poll GET /jobs/{id}
    return JobCancelled(id=job.id, status=status)
