"""Request/response pydantic classes ("models" already means torch models in this project)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    sha256: str


class DetectionResult(BaseModel):
    filename: str | None
    width: int
    height: int
    p_fake: float = Field(ge=0, le=1, description="Probability of the `fake` class.")
    label: Literal["fake", "real"]
    model: ModelRef


class DetectResponse(BaseModel):
    model: ModelRef
    threshold: float
    results: list[DetectionResult]


class ModelInfo(BaseModel):
    name: str
    architecture: str
    input_size: tuple[int, int]
    class_names: tuple[str, str]
    fake_index: int
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
