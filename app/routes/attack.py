from __future__ import annotations

import base64
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Response, UploadFile
from fastapi.responses import JSONResponse
from redis import Redis
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app import jobs
from app.deps import get_app_settings, get_detection, get_pixel_gate, get_redis
from app.detection import DetectionService
from app.errors import InvalidParameter, applicable_params, problem_responses
from app.pixels import PixelGate, declared_pixels
from app.routes.jobs import queue_job
from app.schemas import JobAccepted
from app.uploads import form_fields, read_image
from core import keys
from core.settings import Settings
from models.attacks import CW_LIMITS
from models.attacks.report import attack_and_measure, attack_steps, check_params, perturbation_picture
from models.images import encode_png

router = APIRouter(tags=["attacks"])

#: The form fields of POST /attack (anything else is refused: app.uploads.form_fields).
ATTACK_FIELDS = frozenset(
    {
        *("file", "method", "target", "source", "eps", "steps", "step_size", "preset", "search_steps"),
        *("max_iterations", "kappa", "c", "c_max", "lr", "targeted", "save_format"),
    }
)
#: The image size at which the synchronous step budgets (DFG_PGD_SYNC_MAX_STEPS, DFG_CW_SYNC_MAX_STEPS) count.
SYNC_REFERENCE_PIXELS = 512 * 512

#: Form fields whose attack keyword differs (CW-L2's ``c_init`` is the form's ``c``).
_KEYWORDS = {"c": "c_init"}
_FORM_NAMES = {v: k for k, v in _KEYWORDS.items()}
_KEYWORD_RE = re.compile(r"\b(" + "|".join(map(re.escape, _FORM_NAMES)) + r")\b")


def _in_form_names(message: str) -> str:
    """An attack's ValueError, naming the form fields a client sends rather than the keywords behind them."""
    return _KEYWORD_RE.sub(lambda m: _FORM_NAMES[m.group(1)], message)


def _run_sync(
    service: DetectionService,
    x: Tensor,
    method: str,
    target: str,
    source: str | None,
    params: dict[str, Any],
    save_format: str,
) -> dict[str, Any]:
    tgt = service.model(target)
    src = service.model(source) if source and source != target else None
    with service.lock:
        report = attack_and_measure(
            method, tgt.detector, x.unsqueeze(0).to(service.zoo.device),
            source=src.detector if src else None, params=params, save_format=save_format,
        )[0]  # fmt: skip
    adv = report.adv.float().cpu()
    body = report.metrics()
    body["target"] = {"name": tgt.name, "sha256": tgt.sha256}
    body["source"] = {"name": (src or tgt).name, "sha256": (src or tgt).sha256}
    # The delivered file itself (PNG, or JPEG for jpeg75): what success was judged on.
    body["adversarial"] = base64.b64encode(report.encoded).decode()
    body["adversarial_media_type"] = "image/jpeg" if save_format == "jpeg75" else "image/png"
    body["perturbation"] = base64.b64encode(encode_png(perturbation_picture(x, adv))).decode()
    return body


def _real(*, gt: float | None = None, ge: float | None = None, le: float | None = None, description: str) -> Any:
    """A float form field: NaN and infinity are refused as "not a finite number" before any bound is tested."""
    return Form(gt=gt, ge=ge, le=le, allow_inf_nan=False, description=description)


@router.post(
    "/attack",
    summary="Craft an adversarial example against a detector (white-box, or black-box transfer from `source`)",
    responses={
        202: {
            "description": "Above the synchronous step budget (steps counted at 512 x 512 pixels): queued as a job",
            "model": JobAccepted,
        },
        **problem_responses(404, 409, 413, 415, 422, 503),
    },
    dependencies=[Depends(form_fields(ATTACK_FIELDS))],
)
async def attack(
    response: Response,
    file: Annotated[UploadFile, File(description="The image to perturb.")],
    method: Annotated[Literal["fgsm", "pgd", "cw_l2"], Form()] = "fgsm",
    target: Annotated[str | None, Form(description="Detector under attack (default model if unset).")] = None,
    source: Annotated[
        str | None, Form(description="Detector the attack is crafted on; differs from target = black-box.")
    ] = None,
    eps: Annotated[
        float | None, _real(gt=0, le=1, description="L-inf budget in [0,1] pixel units (fgsm, pgd).")
    ] = None,
    steps: Annotated[int | None, Form(ge=1, le=10_000, description="PGD steps.")] = None,
    step_size: Annotated[float | None, _real(gt=0, le=1, description="PGD step size.")] = None,
    preset: Annotated[Literal["paper", "default"] | None, Form(description="CW-L2 preset.")] = None,
    search_steps: Annotated[int | None, Form(ge=1, le=20, description="CW-L2 binary-search steps over c.")] = None,
    max_iterations: Annotated[
        int | None, Form(ge=1, le=100_000, description="CW-L2 Adam steps per search step.")
    ] = None,
    kappa: Annotated[
        float | None, _real(ge=0, le=CW_LIMITS["kappa"], description="CW-L2 confidence margin on logits.")
    ] = None,
    c: Annotated[
        float | None,
        _real(gt=0, le=CW_LIMITS["c_init"], description="CW-L2 initial trade-off constant c (binary-searched)."),
    ] = None,
    c_max: Annotated[
        float | None, _real(gt=0, le=CW_LIMITS["c_max"], description="CW-L2 largest c the search may reach.")
    ] = None,
    lr: Annotated[float | None, _real(gt=0, le=10, description="CW-L2 Adam learning rate.")] = None,
    targeted: Annotated[
        bool,
        Form(
            description="Aim at the other class than the target detector's clean verdict (crafted on `source`) "
            "instead of away from the crafting detector's verdict. Success: the target's label of the delivered "
            "file is that class."
        ),
    ] = False,
    save_format: Annotated[Literal["png", "jpeg75"], Form(description="Judge success after saving as this.")] = "png",
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
    settings: Settings = Depends(get_app_settings),
    service: DetectionService = Depends(get_detection),
    conn: Redis = Depends(get_redis),
    gate: PixelGate = Depends(get_pixel_gate),
) -> Any:
    given = {
        "eps": eps, "steps": steps, "step_size": step_size, "preset": preset, "search_steps": search_steps,
        "max_iterations": max_iterations, "kappa": kappa, "c": c, "c_max": c_max, "lr": lr,
    }  # fmt: skip
    allowed = {
        "fgsm": {"eps"},
        "pgd": {"eps", "steps", "step_size"},
        "cw_l2": {"preset", "search_steps", "max_iterations", "kappa", "c", "c_max", "lr"},
    }[method]
    params = {_KEYWORDS.get(k, k): v for k, v in applicable_params(method, given, allowed).items()}
    params["targeted"] = targeted
    jobs.check_idempotency_key(idempotency_key)  # refused alike whether the attack is queued or not
    try:
        # Every check the attack itself would make, now: a bad value is a 422, never a failed job or a 500.
        check_params(method, params)
    except ValueError as exc:
        raise InvalidParameter(_in_form_names(str(exc))) from exc
    tgt = service.model(target)
    src = service.model(source) if source else tgt
    async with gate.hold(await declared_pixels([file])):  # the full-size image, until the attack is done
        data, x = await read_image(file, settings)
        # An attack works at the upload's own resolution, so a step on a 40 Mpx image costs ~150 at 512 x 512:
        # steps are counted at SYNC_REFERENCE_PIXELS, and a larger image counts as proportionally more.
        budget = settings.cw_sync_max_steps if method == "cw_l2" else settings.pgd_sync_max_steps
        scale = max(1.0, x.shape[-1] * x.shape[-2] / SYNC_REFERENCE_PIXELS)
        if attack_steps(method, params) * scale <= budget:
            try:
                return await run_in_threadpool(_run_sync, service, x, method, tgt.name, src.name, params, save_format)
            except ValueError as exc:
                raise InvalidParameter(_in_form_names(str(exc))) from exc
        del x
    job_params = {"method": method, "target": tgt.name, "source": src.name, "save_format": save_format, **params}
    body = await queue_job(
        response, conn, settings, func=keys.ATTACK_FUNC, kind="attack", image=data, params=job_params,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    return JSONResponse(body.model_dump(), status_code=response.status_code, headers={"Location": body.location})
