"""The audits API: a robustness audit of a detector on a zip of ``fake/`` and ``real/`` images, run as shards by the
workers (docs/AUDIT.md, "As a service job")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile
from redis import Redis
from starlette.concurrency import run_in_threadpool

from app import audit_service
from app.audit_upload import AuditZipTooLarge, read_audit_zip
from app.auth import current_owner
from app.deps import get_app_settings, get_detection, get_redis
from app.detection import DetectionService
from app.errors import InvalidParameter, problem_responses
from app.routes.detect import ThresholdField
from app.routes.jobs import Owner
from app.schemas import AuditAccepted, AuditInfo
from app.uploads import form_fields
from core import audits
from core.settings import Settings
from models.methods import number_from_text

router = APIRouter(tags=["audits"])

AUDIT_FIELDS = frozenset({"file", "model", "profile", "threshold", "eps"})


def parse_eps(values: list[str] | None) -> list[float] | None:
    """``eps`` fields, each one budget or several separated by commas, as decimals or fractions (``8/255``)."""
    texts = [t.strip() for v in values or [] for t in v.split(",") if t.strip()]
    try:
        return [number_from_text(t) for t in texts] or None
    except ValueError as exc:
        raise InvalidParameter(f"eps: {exc}") from None


@router.post(
    "/audits",
    status_code=202,
    response_model=AuditAccepted,
    summary="Audit a detector on a zip of fake/ and real/ images (a job shared by the workers)",
    responses=problem_responses(404, 413, 422, 503),
    dependencies=[Depends(form_fields(AUDIT_FIELDS, repeatable=frozenset({"eps"})))],
)
async def create_audit(
    response: Response,
    file: Annotated[UploadFile, File(description="A zip of fake/ and/or real/ images (at its root or in one folder).")],
    model: Annotated[str | None, Form(description="Detector name (GET /models); default from settings.")] = None,
    profile: Annotated[Literal["quick", "standard"], Form(description="Budgets (docs/AUDIT.md, Profiles).")] = "quick",
    threshold: ThresholdField = None,
    eps: Annotated[
        list[str] | None,
        Form(description="L-inf budgets of the white-box curve (repeat, or separate by commas; 8/255 allowed)."),
    ] = None,
    settings: Settings = Depends(get_app_settings),
    service: DetectionService = Depends(get_detection),
    conn: Redis = Depends(get_redis),
) -> AuditAccepted:
    loaded = service.model(model)
    budgets = parse_eps(eps)
    audit_service.threats_of(profile, budgets)  # bad budgets before the upload is read
    data = await file.read(settings.audit_max_bytes + 1)
    if len(data) > settings.audit_max_bytes:
        raise AuditZipTooLarge(f"the zip is larger than {settings.audit_max_bytes} bytes (DFG_AUDIT_MAX_BYTES)")
    upload = await run_in_threadpool(read_audit_zip, data, file.filename or "upload.zip", settings)
    del data
    owner = current_owner()
    spec = await run_in_threadpool(
        lambda: audit_service.create(
            conn, settings, upload, owner=owner, model=loaded.name, profile=profile, eps=budgets, threshold=threshold
        )
    )
    location = f"/audits/{spec.id}"
    response.headers["Location"] = location
    return AuditAccepted(id=spec.id, status="queued", location=location, images=len(spec.items),
                         shards=len(spec.shards), skipped=list(upload.skipped))  # fmt: skip


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
