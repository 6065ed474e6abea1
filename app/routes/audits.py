"""The audits API: a robustness audit of a detector on a zip of ``fake/`` and ``real/`` images, run as shards by the
workers (docs/AUDIT.md, "As a service job")."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from pydantic import Field
from redis import Redis
from starlette.concurrency import run_in_threadpool

from app import audit_service
from app.audit_upload import AuditZipTooLarge, read_audit_zip
from app.auth import current_owner
from app.deps import get_app_settings, get_detection, get_redis
from app.detection import DetectionService
from app.errors import InvalidParameter, problem_responses
from app.forms import STRICT_INT, set_signature
from app.routes.attack import adaptive_form, defense_form, defense_request
from app.routes.detect import ThresholdField
from app.routes.jobs import Owner
from app.schemas import AuditAccepted, AuditInfo
from app.uploads import form_fields
from core import audits
from core.settings import Settings
from models import purify as purifiers
from models.attacks.adaptive import NO_DEFENSE
from models.methods import number_from_text

router = APIRouter(tags=["audits"])

#: The form fields POST /audits declares itself; the defence's come from the purifiers' declarations, as POST /attack's.
OWN_FIELDS = ("file", "model", "profile", "threshold", "eps", "l2_rms", "transfer_from", "defense", "set", "seed")
REPEATABLE = frozenset({"eps", "l2_rms", "transfer_from", "set"})

FILE_HELP = "A zip of fake/ and/or real/ images (at its root or in one folder)."
PROFILE_HELP = "Budgets (docs/AUDIT.md, Profiles)."
EPS_HELP = "L-inf budgets of the white-box curve (repeat, or separate by commas; 8/255 allowed)."
L2_HELP = (
    "Budgets of the white-box L2 curve, per pixel: the root-mean-square change (repeat, or separate by commas; 2/255 "
    "allowed); each row's L2 radius is this times sqrt(3 x H x W) of the detector's input (docs/AUDIT.md)."
)
TRANSFER_HELP = (
    "Detectors of this service (GET /models) to craft transfer attacks on, one `transfer` row each, judged on the "
    "audited one (repeat, or separate by commas); not the audited detector itself."
)
DEFENSE_HELP = (
    "Add the `through_defense` row: the adaptive attack (BPDA and EOT, docs/ATTACKS.md) through this purifier, judged "
    "through its resubmissions; its parameters are the purifier's, prefixed `defense_`, and the adaptive attack's "
    "(`eot_samples`, `resubmissions`, `bpda_iterations`), as POST /attack takes them. A randomised purifier gets the "
    "profile's EOT samples (quick 2, standard 20) unless `eot_samples` is given."
)
SET_HELP = (
    "Override a budget: `THREAT.PARAM=VALUE`, e.g. `eot_pgd.steps=50` or `resave_jpeg.quality=60` (repeatable; "
    "docs/AUDIT.md, Profiles). The record states the overrides."
)
SEED_HELP = "The audit's seed: every shard's seed derives from it (the command line's --seed)."
SeedField = Annotated[Annotated[int, Field(ge=0, le=2**31 - 1)], STRICT_INT, Form(description=SEED_HELP)]


def audit_fields() -> frozenset[str]:
    """Every form field of POST /audits (anything else is refused: ``app.uploads.form_fields``)."""
    return frozenset({*OWN_FIELDS, *defense_form().fields, *adaptive_form().fields})


def parse_eps(values: list[str] | None, field: str = "eps") -> list[float] | None:
    """``eps`` (or ``l2_rms``) fields, each one budget or several separated by commas, as decimals or fractions
    (``8/255``)."""
    texts = [t.strip() for v in values or [] for t in v.split(",") if t.strip()]
    try:
        return [number_from_text(t) for t in texts] or None
    except ValueError as exc:
        raise InvalidParameter(f"{field}: {exc}") from None


def build_router() -> APIRouter:
    """POST /audits for the purifiers registered now (the app calls this when it is created), then the routes of
    ``router``."""
    built = APIRouter(tags=["audits"])
    dform = defense_form()

    async def create_audit(
        *,
        response: Response,
        file: UploadFile,
        model: str | None,
        profile: str,
        threshold: float | None,
        eps: list[str] | None,
        l2_rms: list[str] | None,
        transfer_from: list[str] | None,
        defense: str,
        overrides: list[str] | None,
        seed: int,
        settings: Settings,
        service: DetectionService,
        conn: Redis,
        **values: Any,
    ) -> AuditAccepted:
        # Every option checked before the upload is read: a bad value is a 422 naming it, never a failed audit.
        loaded = service.model(model)
        sources = audit_service.transfer_sources(service, transfer_from, loaded.name)
        defended = defense_request(dform, defense, values, settings)
        given = audit_service.defense_of(None if defended is None else defended[0], profile)
        over = audit_service.overrides_of(overrides)
        budgets, l2 = parse_eps(eps), parse_eps(l2_rms, "l2_rms")
        audit_service.threats_of(profile, budgets, sources=sources, defense=given is not None, overrides=over, l2=l2)
        owner, audit_id = current_owner(), audit_service.new_id()
        await run_in_threadpool(audit_service.reserve, conn, settings, owner, audit_id)  # 429 over the key's cap
        try:
            data = await file.read(settings.audit_max_bytes + 1)
            if len(data) > settings.audit_max_bytes:
                raise AuditZipTooLarge(f"the zip is larger than {settings.audit_max_bytes} bytes (DFG_AUDIT_MAX_BYTES)")
            upload = await run_in_threadpool(read_audit_zip, data, file.filename or "upload.zip", settings)
            del data
            spec = await run_in_threadpool(
                lambda: audit_service.create(
                    conn, settings, upload, audit_id=audit_id, owner=owner, model=loaded.name, profile=profile,
                    eps=budgets, threshold=threshold, transfer_from=sources, defense=given, overrides=over, seed=seed,
                    l2_rms=l2,
                )
            )  # fmt: skip
        except Exception:
            await run_in_threadpool(audit_service.release, conn, owner, audit_id)
            raise
        location = f"/audits/{spec.id}"
        response.headers["Location"] = location
        return AuditAccepted(id=spec.id, status="queued", location=location, images=len(spec.items),
                             shards=len(spec.shards), skipped=list(upload.skipped))  # fmt: skip

    defenses = [NO_DEFENSE, *purifiers.names()]
    own = [
        ("response", Response, inspect.Parameter.empty),
        ("file", Annotated[UploadFile, File(description=FILE_HELP)], inspect.Parameter.empty),
        ("model", Annotated[str | None, Form(description="Detector name (GET /models); default from settings.")], None),
        ("profile", Annotated[Literal["quick", "standard"], Form(description=PROFILE_HELP)], "quick"),
        ("threshold", ThresholdField, None),
        ("eps", Annotated[list[str] | None, Form(description=EPS_HELP)], None),
        ("l2_rms", Annotated[list[str] | None, Form(description=L2_HELP)], None),
        ("transfer_from", Annotated[list[str] | None, Form(description=TRANSFER_HELP)], None),
        ("defense", Annotated[Literal[tuple(defenses)], Form(description=DEFENSE_HELP)], NO_DEFENSE),  # type: ignore[misc]
        ("overrides", Annotated[list[str] | None, Form(alias="set", description=SET_HELP)], None),
        ("seed", SeedField, 0),
        ("settings", Settings, Depends(get_app_settings)),
        ("service", DetectionService, Depends(get_detection)),
        ("conn", Redis, Depends(get_redis)),
    ]
    set_signature(create_audit, own, dform, adaptive_form())
    built.add_api_route(
        "/audits", create_audit, methods=["POST"], status_code=202, response_model=AuditAccepted,
        summary="Audit a detector on a zip of fake/ and real/ images (a job shared by the workers)",
        responses=problem_responses(404, 413, 422, 429, 503),
        dependencies=[Depends(form_fields(audit_fields(), repeatable=REPEATABLE))],
    )  # fmt: skip
    built.include_router(router)
    return built


@router.get(
    "/audits/{audit_id}",
    response_model=AuditInfo,
    summary="An audit's status, progress per threat and ETA",
    responses=problem_responses(404, 422, 503),
)
def get_audit(
    audit_id: str, owner: Owner, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> AuditInfo:
    return audit_service.describe(conn, settings, audit_service.fetch(conn, audit_id, owner))


@router.delete(
    "/audits/{audit_id}",
    response_model=AuditInfo,
    summary="Stop an audit: queued shards are canceled, running ones' results dropped",
    responses=problem_responses(404, 422, 503),
)
def delete_audit(
    audit_id: str, owner: Owner, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
) -> AuditInfo:
    return audit_service.cancel(conn, settings, audit_service.fetch(conn, audit_id, owner))


def _report_route(name: str, media_type: str) -> None:
    def get_report(
        audit_id: str, owner: Owner, settings: Settings = Depends(get_app_settings), conn: Redis = Depends(get_redis)
    ) -> Response:
        spec = audit_service.fetch(conn, audit_id, owner)
        return Response(audit_service.report_file(conn, settings, spec, name), media_type=media_type)

    router.add_api_route(
        f"/audits/{{audit_id}}/{name}", get_report, methods=["GET"], response_class=Response,
        summary=f"A finished audit's {name}", name=f"audit_{name.replace('.', '_')}",
        responses={200: {"content": {media_type: {}}}, **problem_responses(404, 422, 503)},
    )  # fmt: skip


for _name, _media in audits.REPORT_FILES.items():
    _report_route(_name, _media)
