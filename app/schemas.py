"""Request/response pydantic classes ("models" already means torch models in this project)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    sha256: str


class FaceResult(BaseModel):
    box: tuple[int, int, int, int] = Field(
        description="The face's square crop [x0, y0, x1, y1] in the upload's pixels (x1, y1 exclusive): dlib's box "
        "enlarged 1.3x as FaceForensics++ crops (docs/FACES.md)."
    )
    p_fake: float = Field(ge=0, le=1, description="Probability of the `fake` class for this face's crop.")
    label: Literal["fake", "real"]


class DetectionResult(BaseModel):
    filename: str | None
    width: int
    height: int
    p_fake: float | None = Field(
        ge=0, le=1, description="Probability of the `fake` class; with crop=faces its most fake face's (null: no face)."
    )
    label: Literal["fake", "real", "no_face"] = Field(description="`no_face`: crop=faces found no face.")
    model: ModelRef
    faces: list[FaceResult] | None = Field(None, description="crop=faces only: every face found, in reading order.")


class DetectResponse(BaseModel):
    model: ModelRef
    threshold: float
    threshold_source: ThresholdSource = Field(
        default="request",
        description="Where `threshold` came from: the request, the checkpoint's fitted operating threshold "
        "(`metrics.calibration`), or 0.5 when neither gives one.",
    )
    results: list[DetectionResult]


class ModelInfo(BaseModel):
    name: str
    architecture: str
    input_size: tuple[int, int]
    class_names: tuple[str, str]
    fake_index: int = Field(
        description="The fake class's index in the checkpoint's own output; the service reorders the logits, so "
        "`p_fake` is always the fake class's probability."
    )
    logits: int = Field(2, description="2 (softmax) or 1 (sigmoid head).")
    resize: Literal["resize", "center-crop", "short-side-crop"] = Field(
        "resize", description="How an image is fitted to input_size (docs/IMPORTING.md)."
    )
    resize_short: int | None = Field(
        None, description="short-side-crop: the shorter side before the centre crop (timm: input / crop_pct)."
    )
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True
    threshold: float = Field(description="The operating threshold /detect uses when a request gives none.")
    threshold_source: Literal["checkpoint", "default"] = Field(
        description="`checkpoint`: fitted on validation images (`calibration` says how); `default`: 0.5."
    )
    calibration: dict[str, Any] | None = Field(
        None, description="How the checkpoint's threshold was fitted: target FPR and the validation rates."
    )
    demo_data: bool = Field(
        description="Trained on the synthetic demo data (docs/DATA.md): its verdicts on real photos mean nothing."
    )
    mean: tuple[float, float, float] | None = Field(None, description="Normalisation inside the detector.")
    std: tuple[float, float, float] | None = None
    sha256: str
    default: bool
    metrics: dict[str, Any]
    provenance: dict[str, Any]


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    models: list[str]
    device: str
    redis: Literal["ok"]
    workers: int


class JobProgress(BaseModel):
    iteration: int
    max_iterations: int
    loss: float | None = None
    psnr: float | None = None
    stage: str = ""
    fraction: float
    eta_s: float | None = Field(None, description="Estimated seconds left, from the rate so far.")


class JobAccepted(BaseModel):
    id: str
    status: str
    location: str


class JobInfo(BaseModel):
    id: str
    kind: str = Field(description="What the job does: purify or attack.")
    status: str = Field(description="RQ's status vocabulary: queued, started, finished, failed, stopped, canceled...")
    params: dict[str, Any]
    created_at: datetime | None
    enqueued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None
    attempts: int = Field(description="Times a worker started this job (more than 1 after a retry).")
    retries_left: int | None
    progress: JobProgress | None
    result: dict[str, Any] | None
    result_url: str | None
    error: str | None


class JobCancelled(BaseModel):
    id: str
    status: str


class DefenseOutcome(BaseModel):
    """How an adaptive attack saw the defence, and how the defence judged the delivered file (docs/ATTACKS.md)."""

    purifier: str
    params: dict[str, Any] = Field(description="The defence's parameters, as it judged the delivered file.")
    bpda: Literal["identity", "approx", "exact"] = Field(
        description="The backward pass the attack used through the purifier: the identity (BPDA), a differentiable "
        "approximation's gradient around the real purifier (BPDA), or the purifier's own (exact)."
    )
    randomized: bool
    eot_samples: int = Field(description="Purifier runs averaged per attack step.")
    resubmissions: int = Field(description="Independent purifier runs the delivered file was judged by.")
    attack_params: dict[str, Any] = Field(
        description="The purifier's parameters inside the attack (it may run fewer steps)."
    )
    p_fake_after: list[float] = Field(description="The target's p_fake of each purified resubmission.")
    success_any: bool = Field(description="Some resubmission fooled the defended detector (the worst case).")
    success_all: bool
    success_rate: float
    bare_success: bool = Field(description="The delivered file fools the detector without the purifier.")


ThresholdSource = Literal["request", "checkpoint", "default"]


class AttackResult(BaseModel):
    """A synchronous attack's answer (a queued one's job `result` has the same fields, without `adversarial`)."""

    method: str
    save_format: Literal["png", "jpeg75"]
    threshold: float = Field(
        description="The target's operating threshold every label here uses (fake when p_fake >= threshold), chosen "
        "as /detect chooses it."
    )
    threshold_source: ThresholdSource = Field(
        description="Where `threshold` came from: the request, the target checkpoint's fitted one, or 0.5."
    )
    label_before: Literal["fake", "real"] = Field(description="The target's label of the clean image.")
    label_after: Literal["fake", "real", "no_face"] = Field(
        description="The target's label of the delivered file (`no_face`: crop=faces found no face on it)."
    )
    p_fake_before: float
    p_fake_after: float | None = Field(
        description="The target's p_fake of the delivered file (what /detect says of it, with the same crop)."
    )
    l2: float = Field(description="L2 norm of delivered - clean, in [0, 1] pixel units.")
    linf: float
    psnr: float | None = Field(description="dB; null when the delivered image equals the input.")
    iterations: int = Field(description="Optimisation steps actually run.")
    success: bool = Field(
        description="The target's verdict at `threshold` on the delivered file differs from its verdict on the clean "
        "image (targeted: it is the goal; with a defense: that of some purified resubmission, `defense.success_any`)."
    )
    source_p_fake_before: float | None = Field(description="Black-box runs: the crafting detector's p_fake.")
    source_p_fake_after: float | None
    target: ModelRef
    source: ModelRef
    defense: DefenseOutcome | None = Field(
        default=None, description="Adaptive attacks (defense other than none): the defence and its verdicts."
    )
    adversarial: str = Field(description="The delivered file, base64 (PNG, or JPEG for jpeg75).")
    adversarial_media_type: Literal["image/png", "image/jpeg"]
    perturbation: str = Field(description="The perturbation magnified to full range around mid-grey, base64 PNG.")
    crop: Literal["none", "faces"] = Field("none", description="faces: the attack changed only the face boxes.")
    faces_before: list[FaceResult] | None = Field(None, description="crop=faces: the upload's faces, as attacked.")
    faces: list[FaceResult] | None = Field(
        None, description="crop=faces: the faces found again on the delivered file (what /detect crop=faces says)."
    )


class MethodParameter(BaseModel):
    """One parameter of an attack or purifier, as its declaration states it (models/methods.py ``Param``)."""

    name: str = Field(description="The form field (and command-line flag) that sets it.")
    type: Literal["bool", "int", "float", "str"]
    description: str
    default: bool | int | float | str | None = Field(
        description="Its value when a request leaves it out (null: the method's own rule, see `default_doc`, or the "
        "preset's)."
    )
    default_doc: str | None = Field(None, description="A default that depends on other values, e.g. `eps / 4`.")
    minimum: float | None = Field(None, description="The lowest value the API accepts.")
    exclusive_minimum: bool = Field(False, description="The minimum itself is refused.")
    maximum: float | None = None
    choices: list[str] | None = Field(None, description="`str` parameters: the values it takes.")
    nullable: bool = Field(False, description="Left out, the method picks (a DIP preset's step count).")


class MethodDeclaration(BaseModel):
    name: str
    summary: str
    parameters: list[MethodParameter]


class AttackDeclaration(MethodDeclaration):
    step_budget: Literal["gradient", "optimizer"] = Field(
        description="Which synchronous step budget counts its steps (DFG_PGD_SYNC_MAX_STEPS or DFG_CW_SYNC_MAX_STEPS); "
        "above it, POST /attack answers 202 and queues a job."
    )


class PurifierDeclaration(MethodDeclaration):
    iterative: bool = Field(description="An optimisation (DIP): as an attack's defense it always runs as a queued job.")
    randomized: bool = Field(description="Each run draws fresh randomness (EOT and resubmissions differ).")


class MethodsResponse(BaseModel):
    """The registered attacks and purifiers (the same declarations POST /attack and POST /purify take)."""

    attacks: list[AttackDeclaration]
    purifiers: list[PurifierDeclaration]
    defense_prefix: str = Field(
        description="POST /attack's `defense` parameters are the purifier's, named with this prefix."
    )
    adaptive: list[MethodParameter] = Field(description="POST /attack's settings of an attack through a defense.")


# --- audits (app/routes/audits.py, docs/AUDIT.md "As a service job") ---


class AuditAccepted(BaseModel):
    id: str
    status: str
    location: str
    images: int = Field(description="Images the audit runs on.")
    shards: int = Field(description="RQ jobs the audit is split into (threats x runs of images).")
    skipped: list[str] = Field(description="Zip entries left out: folders, __MACOSX/, .DS_Store and the like.")


class ThreatProgress(BaseModel):
    threat: str
    done: int = Field(description="Shards of this threat whose result is stored.")
    total: int


class AuditInfo(BaseModel):
    id: str
    status: Literal["queued", "started", "finished", "failed", "stopped"] = Field(
        description="queued: no shard has started; started: some have; finished: the report is ready; failed: a shard "
        "or the assembly failed for good (`error` says why); stopped: DELETE /audits/{id}."
    )
    model: str
    profile: str
    images: int
    created_at: datetime
    done: int = Field(description="Shards whose result is stored.")
    total: int
    progress: list[ThreatProgress]
    eta_s: float | None = Field(description="Seconds left at the rate so far (none before the first shard ends).")
    error: str | None = None
    reports: dict[str, str] | None = Field(None, description="The report files' URLs, once finished.")
