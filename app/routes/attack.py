"""POST /attack: its form is derived from the attack registry when the app is built (``app.forms``)."""

from __future__ import annotations

import base64
import inspect
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from fastapi.responses import JSONResponse
from redis import Redis
from torch import Tensor

from app import jobs
from app.compute import AttackThreadsBusy
from app.deps import get_app_settings, get_detection, get_pixel_gate, get_redis
from app.detection import DetectionService
from app.errors import InvalidParameter, problem_responses
from app.faces import faces_of
from app.forms import STRICT_BOOL, FormField, MethodForm, method_form, set_signature
from app.pixels import PixelGate, declared_pixels
from app.routes.detect import ThresholdField
from app.routes.jobs import IdempotencyKey, queue_job
from app.schemas import AttackResult, JobAccepted
from app.uploads import form_fields, read_image
from core.job_plan import plan_attack
from core.jobs import AttackJob
from core.settings import Settings
from models import attacks
from models import purify as purifiers
from models.attacks.adaptive import ADAPTIVE_PARAMS, NO_DEFENSE, Defense, resolve_defense
from models.attacks.measure import SAVE_FORMATS, attack_in_zoo, check_adaptive_crop
from models.facecrop import CROP_MODES, box_from_list

#: The form fields POST /attack declares itself; the rest come from the attacks' and purifiers' declarations.
OWN_FIELDS = ("file", "method", "target", "source", "targeted", "save_format", "crop", "defense", "threshold")
#: A defence's parameters are form fields of their own, named with this prefix (``defense_quality``).
DEFENSE_PREFIX = "defense_"

DEFENSE_HELP = (
    "Attack through this purifier (an adaptive attack: BPDA and EOT, docs/ATTACKS.md) and judge the delivered file "
    "as the defender sees it, through `resubmissions` purifier runs; `none` attacks the bare detector. Its "
    "parameters are the purifier's, prefixed `defense_`. An iterative purifier (DIP) always runs as a queued job."
)
TARGETED_HELP = (
    "Aim at the other class than the target detector's clean verdict (crafted on `source`) instead of away from "
    "the crafting detector's verdict. Success: the target's label of the delivered file is that class."
)


def attack_form() -> MethodForm:
    return method_form(attacks.ATTACKS_REGISTRY, skip=frozenset(OWN_FIELDS))


def defense_form() -> MethodForm:
    """The defence's parameters: every purifier's, prefixed."""
    return method_form(purifiers.PURIFIERS_REGISTRY, prefix=DEFENSE_PREFIX)


def adaptive_form() -> MethodForm:
    """The adaptive attack's own settings (``eot_samples``, ...), from their declarations."""
    fields = {p.name: FormField(p.name, declarations=[("adaptive attacks", p)]) for p in ADAPTIVE_PARAMS}
    return MethodForm(fields=fields, keywords={})


def attack_fields() -> frozenset[str]:
    """Every form field of POST /attack (anything else is refused: ``app.uploads.form_fields``)."""
    return frozenset({*OWN_FIELDS, *attack_form().fields, *defense_form().fields, *adaptive_form().fields})


def defense_request(
    form: MethodForm, defense: str, values: dict[str, Any], settings: Settings
) -> tuple[dict[str, Any], Defense] | None:
    """The request's defence as ``AttackJob.defense`` holds it, and resolved (None for ``none``), checked now: a
    422 names the field, never a failed job."""
    adaptive = {p.name: values[p.name] for p in ADAPTIVE_PARAMS if values.get(p.name) is not None}
    if defense == NO_DEFENSE:
        stray = sorted(k for k in (*form.fields, *adaptive) if values.get(k) is not None)
        if stray:
            raise InvalidParameter(f"parameters {stray} apply only with a defense, got defense={defense!r}")
        return None
    spec = purifiers.get(defense)
    given = {"method": defense, **form.given(spec, values), **adaptive}
    try:
        resolved = resolve_defense(given)
    except ValueError as exc:
        raise InvalidParameter(f"defense={defense!r}: {exc}") from exc
    if resolved is None:
        return None
    if spec.iterative and spec.iterations_param is not None:
        for name, cap in ((f"{DEFENSE_PREFIX}{spec.iterations_param}", resolved.params.get(spec.iterations_param)),
                          ("bpda_iterations", resolved.bpda_iterations)):  # fmt: skip
            if cap is not None and cap > settings.max_dip_iterations:
                raise InvalidParameter(f"{name}={cap} exceeds the limit of {settings.max_dip_iterations}")
    return given, resolved


CROP_HELP = (
    "`faces`: attack each face found (docs/FACES.md) through its crop at the detector's input size; only pixels "
    "inside the face boxes change and the delivered file is the whole photo, judged by finding its faces again. "
    "An image without a face is a 422."
)


def _run_sync(service: DetectionService, x: Tensor, job: AttackJob) -> dict[str, Any]:
    # In the attack threads, holding the compute behind /detect (DetectionService.run_attack, app/compute.py).
    outcome = attack_in_zoo(
        service.zoo, x, method=job.method, target=job.target, source=job.source, params=job.params,
        save_format=job.save_format, defense=job.defense, crop=job.crop,
        faces=[box_from_list(b) for b in job.faces] or None, threshold=job.threshold,
    )  # fmt: skip
    # The delivered file itself (PNG, or JPEG for jpeg75): what success was judged on.
    return {**outcome.body, "adversarial": base64.b64encode(outcome.report.encoded).decode()}


def build_router() -> APIRouter:
    """The /attack route for the attacks registered now (the app calls this when it is created)."""
    router = APIRouter(tags=["attacks"])
    form = attack_form()
    dform = defense_form()
    names = attacks.names()
    defenses = [NO_DEFENSE, *purifiers.names()]

    async def attack(
        *,
        response: Response,
        file: UploadFile,
        method: str,
        target: str | None,
        source: str | None,
        targeted: bool,
        save_format: str,
        crop: str,
        defense: str,
        threshold: float | None,
        idempotency_key: str | None,
        settings: Settings,
        service: DetectionService,
        conn: Redis,
        gate: PixelGate,
        **values: Any,
    ) -> Any:
        spec = attacks.get(method)
        extra: dict[str, Any] = {"targeted": targeted} if spec.declares("targeted") else {}
        if targeted and not spec.declares("targeted"):
            raise InvalidParameter(f"method={method!r} has no targeted mode")
        jobs.check_idempotency_key(idempotency_key)  # refused alike whether the attack is queued or not
        # Every check the attack itself would make, now: a bad value is a 422, never a failed job or a 500. The job
        # keeps the request's own values (a preset stays named); attack_in_zoo resolves them again, identically,
        # whether it runs here (synchronous) or in the worker.
        given = {**form.given(spec, values), **extra}
        resolved = form.resolve_given(spec, given)
        defended = defense_request(dform, defense, values, settings)
        try:
            check_adaptive_crop(crop, defended is not None)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from exc
        tgt = service.model(target)
        src = service.model(source) if source else tgt
        job = AttackJob(
            method=method, target=tgt.name, source=src.name, save_format=save_format, params=given,
            defense=None if defended is None else defended[0], threshold=threshold,
        )  # fmt: skip
        async with gate.hold(await declared_pixels([file])):  # the full-size image, until the attack is done
            data, x = await read_image(file, settings)
            faces = await faces_of(x, crop, file.filename)
            job = replace(job, crop=crop, faces=faces)
            # One cost plan (core/job_plan.py): synchronous within its budget, else queued in its lane.
            plan = plan_attack(
                settings, spec, resolved, None if defended is None else defended[1], height=int(x.shape[-2]),
                width=int(x.shape[-1]), faces=len(faces),
            )  # fmt: skip
            if plan.sync:
                try:
                    return await service.run_attack(_run_sync, service, x, job, wait_s=settings.sync_attack_wait_s)
                except AttackThreadsBusy:
                    pass  # no attack thread freed up within DFG_SYNC_ATTACK_WAIT_S: queued as a job instead
                except ValueError as exc:
                    raise InvalidParameter(str(exc)) from exc
            del x
        body = await queue_job(
            response, conn, settings, func=job.FUNC, kind=job.KIND, image=data, params=job.to_json(),
            idempotency_key=idempotency_key, plan=plan,
        )  # fmt: skip
        return JSONResponse(body.model_dump(), status_code=response.status_code, headers={"Location": body.location})

    own = [
        ("response", Response, inspect.Parameter.empty),
        ("file", Annotated[UploadFile, File(description="The image to perturb.")], inspect.Parameter.empty),
        ("method", Annotated[Literal[tuple(names)], Form(description=_methods_help())], names[0]),  # type: ignore[misc]
        ("target", Annotated[str | None, Form(description="Detector under attack (default model if unset).")], None),
        (
            "source",
            Annotated[
                str | None, Form(description="Detector the attack is crafted on; differs from target = black-box.")
            ],
            None,
        ),
        ("targeted", Annotated[bool, STRICT_BOOL, Form(description=TARGETED_HELP)], False),
        (
            "save_format",
            Annotated[Literal[SAVE_FORMATS], Form(description="Judge success after saving as this.")],  # type: ignore[valid-type]
            "png",
        ),
        ("crop", Annotated[Literal[CROP_MODES], Form(description=CROP_HELP)], "none"),  # type: ignore[valid-type]
        (
            "defense",
            Annotated[Literal[tuple(defenses)], Form(description=DEFENSE_HELP)],  # type: ignore[misc]
            NO_DEFENSE,
        ),
        ("threshold", ThresholdField, None),
        ("idempotency_key", IdempotencyKey, None),
        ("settings", Settings, Depends(get_app_settings)),
        ("service", DetectionService, Depends(get_detection)),
        ("conn", Redis, Depends(get_redis)),
        ("gate", PixelGate, Depends(get_pixel_gate)),
    ]
    set_signature(attack, own, form, dform, adaptive_form())
    router.add_api_route(
        "/attack",
        attack,
        methods=["POST"],
        summary="Craft an adversarial example against a detector (white-box, or black-box transfer from `source`)",
        responses={
            200: {"description": "The attack ran within the synchronous budget", "model": AttackResult},
            202: {
                "description": "Above the synchronous step budget (steps counted at 512 x 512 pixels), through an "
                "iterative purifier, or no attack thread free within DFG_SYNC_ATTACK_WAIT_S: queued as a job",
                "model": JobAccepted,
            },
            **problem_responses(404, 409, 413, 415, 422, 503),
        },
        dependencies=[Depends(form_fields(attack_fields()))],
    )
    return router


def _methods_help() -> str:
    return "The attack: " + "; ".join(f"`{s.name}`: {s.description}" for s in attacks.ATTACKS_REGISTRY) + "."
