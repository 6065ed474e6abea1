"""POST /purify: its form is derived from the purifier registry when the app is built (``app.forms``)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from redis import Redis

from app.deps import get_app_settings, get_pixel_gate, get_redis
from app.errors import InvalidParameter, problem_responses
from app.faces import faces_of
from app.forms import MethodForm, method_form, set_signature
from app.pixels import PixelGate, declared_pixels
from app.routes.detect import ThresholdField
from app.routes.jobs import IdempotencyKey, queue_job
from app.schemas import JobAccepted
from app.uploads import form_fields, read_image
from core.job_plan import plan_purify
from core.jobs import PurifyJob, check_working_size
from core.settings import Settings
from models import purify as purifiers
from models.facecrop import CROP_MODES

#: The form fields POST /purify declares itself; the rest come from the purifiers' declarations.
OWN_FIELDS = ("file", "method", "crop", "threshold")
CROP_HELP = (
    "`faces`: purify each face found (docs/FACES.md) and paste it back into the photo, whose other pixels stay as "
    "they were; the result says which boxes. An image without a face is a 422."
)


def purify_form() -> MethodForm:
    return method_form(purifiers.PURIFIERS_REGISTRY, skip=frozenset(OWN_FIELDS))


def purify_fields() -> frozenset[str]:
    """Every form field of POST /purify (anything else is refused: ``app.uploads.form_fields``)."""
    return frozenset({*OWN_FIELDS, *purify_form().fields})


def build_router() -> APIRouter:
    """The /purify route for the purifiers registered now (the app calls this when it is created)."""
    router = APIRouter(tags=["jobs"])
    form = purify_form()
    names = purifiers.names()

    async def purify(
        *,
        response: Response,
        file: UploadFile,
        method: str,
        crop: str,
        threshold: float | None,
        idempotency_key: str | None,
        settings: Settings,
        conn: Redis,
        gate: PixelGate,
        **values: Any,
    ) -> JobAccepted:
        spec = purifiers.get(method)
        cap = values.get("max_iterations")
        if spec.iterative and cap is not None and cap > settings.max_dip_iterations:
            raise InvalidParameter(f"max_iterations={cap} exceeds the limit of {settings.max_dip_iterations}")
        params = form.resolve(spec, values)
        async with gate.hold(await declared_pixels([file])):  # decoded only to be checked, then dropped
            data, x = await read_image(file, settings)
            height, width = int(x.shape[-2]), int(x.shape[-1])
            faces = await faces_of(x, crop, file.filename)
            del x
        if spec.iterative and crop == "none":  # DIP's working size must keep a meaningful side (DFG_DIP_MIN_SIDE)
            try:
                check_working_size(height, width, max_side=settings.purify_max_side, min_side=settings.dip_min_side)
            except ValueError as exc:
                raise InvalidParameter(str(exc)) from exc
        job = PurifyJob(method=method, params=params, crop=crop, faces=faces, threshold=threshold)
        plan = plan_purify(settings, spec, params, height=height, width=width, faces=len(faces))
        return await queue_job(
            response, conn, settings, func=job.FUNC, kind=job.KIND, image=data, params=job.to_json(),
            idempotency_key=idempotency_key, plan=plan,
        )  # fmt: skip

    help_text = "The purifier: " + "; ".join(f"`{s.name}`: {s.description}" for s in purifiers.PURIFIERS_REGISTRY)
    own = [
        ("response", Response, inspect.Parameter.empty),
        ("file", Annotated[UploadFile, File(description="The image to purify.")], inspect.Parameter.empty),
        ("method", Annotated[Literal[tuple(names)], Form(description=help_text + ".")], names[0]),  # type: ignore[misc]
        ("crop", Annotated[Literal[CROP_MODES], Form(description=CROP_HELP)], "none"),  # type: ignore[valid-type]
        ("threshold", ThresholdField, None),
        ("idempotency_key", IdempotencyKey, None),
        ("settings", Settings, Depends(get_app_settings)),
        ("conn", Redis, Depends(get_redis)),
        ("gate", PixelGate, Depends(get_pixel_gate)),
    ]
    set_signature(purify, own, form)
    router.add_api_route(
        "/purify",
        purify,
        methods=["POST"],
        response_model=JobAccepted,
        status_code=202,
        summary="Queue a purification job",
        dependencies=[Depends(form_fields(purify_fields()))],
        responses={
            200: {
                "description": "The job an earlier request with the same Idempotency-Key created",
                "model": JobAccepted,
            },
            **problem_responses(409, 413, 415, 422, 503),
        },
    )
    return router
