"""Job functions, named by dotted path from the API ("workers.jobs.purify").

Each one reads its image from Redis by key (no pickled tensors), reports progress into ``job.meta``,
polls the stop key set by ``DELETE /jobs/{id}``, stores its output PNG under a key with a TTL and
returns a JSON-able dict.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch
from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

from core import keys
from core.job_plan import JobPlan, plan_job
from core.jobs import AttackJob, PurifyJob, check_working_size, working_size
from models.facecrop import NoFace, box_from_list, find_faces, label_of, most_fake, purify_faces, score_faces
from models.faces import Box
from models.images import decode_image, encode_png
from models.progress import Progress, ProgressFn, StopFn
from models.purify.dip import resample
from models.purify.registry import PurifierSpec
from workers import context, dip_batches

PROGRESS_EVERY_S = 0.5
STOP_POLL_S = 0.5


def _current_job() -> Job:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this function runs inside an RQ job")
    return job


def _load_input(ctx: context.WorkerContext, key: str) -> torch.Tensor:
    data = cast(bytes | None, ctx.conn.get(key))
    if data is None:
        raise LookupError(f"the input image {key} has expired or was never stored")
    return decode_image(bytes(data), max_bytes=len(data) or 1, max_pixels=ctx.settings.max_pixels)


log = logging.getLogger("deepfake_guard.jobs")
T = TypeVar("T")


def _best_effort(what: str, fn: Callable[[], T], otherwise: T) -> T:
    """Progress reports and stop checks must not fail a running job when Redis blips (a restart of the
    bundled server takes well under a second): the job goes on, and its result is stored once Redis is back."""
    try:
        return fn()
    except RedisError as exc:
        log.warning("%s skipped: Redis unreachable (%s)", what, exc)
        return otherwise


def _reporter(job: Job) -> ProgressFn:
    started = time.monotonic()
    last = 0.0

    def report(p: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        final = p.iteration >= p.max_iterations
        if now - last < PROGRESS_EVERY_S and not final:
            return
        last = now
        fraction = min(1.0, p.iteration / max(1, p.max_iterations))
        elapsed = now - started
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else None
        job.meta["progress"] = {
            "iteration": p.iteration,
            "max_iterations": p.max_iterations,
            "loss": p.loss,
            "psnr": p.psnr,
            "stage": p.stage,
            "fraction": fraction,
            "eta_s": eta,
        }
        _best_effort("progress report", job.save_meta, None)

    return report


def _stop_check(ctx: context.WorkerContext, job: Job) -> StopFn:
    last = 0.0
    key = keys.stop_key(job.id)

    def should_stop() -> bool:
        nonlocal last
        now = time.monotonic()
        if now - last < STOP_POLL_S:
            return False
        last = now
        if _best_effort("stop check", lambda: bool(ctx.conn.exists(key)), False):
            if ctx.worker is not None:
                ctx.worker.mark_stopped(job.id)
            return True
        return False

    return should_stop


def _begin(ctx: context.WorkerContext, job: Job, *, keep_progress: bool = False) -> None:
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    if not keep_progress:  # a new attempt starts from zero
        job.meta.pop("progress", None)
    job.save_meta()


def _scores(
    ctx: context.WorkerContext, before: torch.Tensor, after: torch.Tensor, threshold: float | None
) -> dict[str, dict[str, Any]]:
    """Each detector's verdict on the upload and the delivered file, at its operating threshold (the request's,
    else its checkpoint's, else 0.5: as /detect judges)."""
    out: dict[str, dict[str, Any]] = {}
    for loaded in ctx.zoo:
        det = loaded.detector
        cut, source = loaded.meta.operating_point(threshold)
        pb, pa = (
            det.p_fake(before.unsqueeze(0).to(ctx.zoo.device)).item(),
            det.p_fake(after.unsqueeze(0).to(ctx.zoo.device)).item(),
        )
        out[loaded.name] = {
            "sha256": loaded.sha256,
            "p_fake_before": pb,
            "p_fake_after": pa,
            "label_before": label_of(pb, cut),
            "label_after": label_of(pa, cut),
            "threshold": cut,
            "threshold_source": source,
        }
    return out


def _fit_side(x: torch.Tensor, max_side: int) -> torch.Tensor:
    """``x`` at the size an iterative purifier works at (``core.jobs.working_size``), clamped to [0, 1]."""
    return resample(x, working_size(int(x.shape[-2]), int(x.shape[-1]), max_side))


def _plan(ctx: context.WorkerContext, job: Job, kind: str, params: dict[str, Any], x: torch.Tensor) -> JobPlan:
    """The job's cost plan as the API made it (its meta), or made here for a job queued without one."""
    raw = job.meta.get("plan")
    if isinstance(raw, dict):
        with contextlib.suppress(KeyError, TypeError):
            return JobPlan.from_json(raw)
    return plan_job(ctx.settings, kind, params, height=int(x.shape[-2]), width=int(x.shape[-1]))


def _finish(
    ctx: context.WorkerContext, x: torch.Tensor, purified: torch.Tensor, threshold: float | None
) -> tuple[bytes, dict[str, Any]]:
    """Resize back to the upload's size, encode the PNG, and score before/after on every detector."""
    h, w = x.shape[-2:]
    purified = resample(purified.float().cpu(), (h, w))
    png = encode_png(purified)
    delivered = decode_image(png, max_bytes=len(png), max_pixels=h * w)
    return png, {"width": w, "height": h, "detectors": _scores(ctx, x, delivered, threshold)}


def _runtime_options(ctx: context.WorkerContext, spec: PurifierSpec) -> dict[str, Any]:
    """The worker's DIP engine settings, for a purifier that takes them (``runtime=``)."""
    if not spec.takes("runtime"):
        return {}
    from models.purify.engine import DipRuntime

    s = ctx.settings
    return {"runtime": DipRuntime(precision=s.dip_precision, channels_last=s.dip_channels_last,
                                  cuda_graphs=s.dip_cuda_graphs)}  # fmt: skip


def _batch_hooks(
    ctx: context.WorkerContext, job: Job, followers: list[dip_batches.Follower], should_stop: StopFn
) -> tuple[ProgressFn, StopFn]:
    """Progress and stop hooks of a batch leader: its progress is mirrored to the jobs it claimed, and each stop
    check also refreshes their claims (so they stay claimed while it lives)."""
    report = _reporter(job)

    def progress(p: Progress) -> None:
        report(p)
        mirror = lambda: dip_batches.mirror_progress(followers, job.meta.get("progress", {}))  # noqa: E731
        _best_effort("batch progress", mirror, None)

    def stop_and_refresh() -> bool:
        _best_effort("batch claim refresh", lambda: dip_batches.refresh(ctx, job.id, followers), None)
        return should_stop()

    return progress, stop_and_refresh


def purify(input_key: str, params: dict[str, Any]) -> dict[str, Any]:
    """Purify the job's image, and those of compatible queued jobs it claims (``workers.dip_batches``)."""
    from models import purify as purifiers

    ctx, job = context.get(), _current_job()
    ctx.zoo.refresh(ctx.settings.checkpoints_reload_s)  # checkpoints added, replaced or removed (models/zoo.py)
    # A job in another job's batch shows that batch's progress (mirrored by its leader), final record included.
    _begin(ctx, job, keep_progress=dip_batches.in_a_batch(ctx, job.id))
    spec_job = PurifyJob.from_json(params)
    spec = purifiers.get(spec_job.method)
    kwargs = spec.resolve(spec_job.params)  # a job queued another way is refused here, at once (no retry)
    should_stop = _stop_check(ctx, job)
    if spec_job.crop == "faces":
        return _purify_faces(ctx, job, spec, spec_job, kwargs, _load_input(ctx, input_key), should_stop, params)
    published = dip_batches.collect(ctx, job, should_stop)
    if published is not None:  # another job's batch purified this one and stored its image
        return published

    def prepare(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = _load_input(ctx, key)
        # An iterative purifier's cost grows with pixels; like the paper (512 x 512) it works at a bounded size and
        # the result is resized back to the upload's resolution.
        return x, (_fit_side(x, ctx.settings.purify_max_side) if spec.iterative else x)

    x, work = prepare(input_key)
    if spec.iterative:  # the API refuses these; a job queued another way fails here, at once (a ValueError)
        s = ctx.settings
        check_working_size(x.shape[-2], x.shape[-1], max_side=s.purify_max_side, min_side=s.dip_min_side)
    followers = dip_batches.claim(ctx, job, spec_job, spec, tuple(work.shape), prepare) if spec.batchable else []
    progress, stop_and_refresh = _batch_hooks(ctx, job, followers, should_stop)
    started = time.monotonic()
    try:
        out = spec.fn(
            torch.stack([work] + [f.work for f in followers]).to(ctx.zoo.device),
            progress=progress, should_stop=stop_and_refresh, **kwargs, **_runtime_options(ctx, spec),
        )  # fmt: skip
    except BaseException:
        dip_batches.release(ctx, followers)
        raise
    if out.steps:  # an iterative run ends between two (throttled) reports, maybe early: record where it ended
        cap = _plan(ctx, job, PurifyJob.KIND, params, x).steps or out.steps
        _final_progress(job, iteration=out.steps, max_iterations=cap, stage=f"{spec.name} done ({out.stopped_by})")
        dip_batches.mirror_progress(followers, job.meta["progress"])
    common = {
        "method": spec.name,
        "params": kwargs,
        "work_size": list(work.shape[-2:]),
        "stopped_by": out.stopped_by,
        "seconds": time.monotonic() - started,
        "batch_size": 1 + len(followers),
        "runtime": out.params.get("runtime"),
    }
    for i, f in enumerate(followers, start=1):
        png_i, scores_i = _finish(ctx, f.x, out.image[i], PurifyJob.from_json(f.job.kwargs["params"]).threshold)
        result_i = {**common, **scores_i, "iterations": int(out.iterations[i]), "batched_with": job.id}
        dip_batches.publish(ctx, f.job.id, result_i, png_i)
    png, scores = _finish(ctx, x, out.image[0], spec_job.threshold)
    _store_image(ctx, job.id, png)
    return {**common, **scores, "iterations": int(out.iterations[0]), "batched_with": None}


def _purify_faces(
    ctx: context.WorkerContext,
    job: Job,
    spec: PurifierSpec,
    spec_job: PurifyJob,
    kwargs: dict[str, Any],
    x: torch.Tensor,
    should_stop: StopFn,
    params: dict[str, Any],
) -> dict[str, Any]:
    """crop=faces: each face box purified on its own (an iterative purifier at most DFG_PURIFY_MAX_SIDE a side, as
    a whole image would be) and pasted back; every pixel outside the boxes is the upload's. Never batched."""
    boxes = [box_from_list(b) for b in spec_job.faces] or find_faces(x)
    if not boxes:
        raise NoFace("crop=faces: no face was found in the image")
    progress, runs = _reporter(job), []
    started = time.monotonic()

    def one(face: torch.Tensor) -> torch.Tensor:
        work = _fit_side(face, ctx.settings.purify_max_side) if spec.iterative else face
        out = spec.fn(work[None].to(ctx.zoo.device), progress=progress, should_stop=should_stop, **kwargs,
                      **_runtime_options(ctx, spec))  # fmt: skip
        runs.append((list(work.shape[-2:]), out))
        return out.image[0].float().cpu()

    purified = purify_faces(x, boxes, one)
    last = runs[-1][1]
    if last.steps:
        cap = _plan(ctx, job, PurifyJob.KIND, params, x).steps or last.steps
        _final_progress(job, iteration=last.steps, max_iterations=cap, stage=f"{spec.name} done ({last.stopped_by})")
    png = encode_png(purified)
    delivered = decode_image(png, max_bytes=len(png), max_pixels=x.shape[-1] * x.shape[-2])
    after_boxes = find_faces(delivered)
    _store_image(ctx, job.id, png)
    return {
        "method": spec.name,
        "params": kwargs,
        "crop": "faces",
        "faces": [
            {"box": b.as_list(), "work_size": size, "iterations": int(out.iterations[0]), "stopped_by": out.stopped_by}
            for b, (size, out) in zip(boxes, runs, strict=True)
        ],
        "faces_after": [b.as_list() for b in after_boxes],
        "work_size": None,
        "stopped_by": last.stopped_by,
        "iterations": sum(int(out.iterations[0]) for _, out in runs),
        "seconds": time.monotonic() - started,
        "batch_size": 1,
        "batched_with": None,
        "runtime": last.params.get("runtime"),
        "width": int(x.shape[-1]),
        "height": int(x.shape[-2]),
        "detectors": _face_scores(ctx, x, boxes, delivered, after_boxes, spec_job.threshold),
    }


def _face_scores(
    ctx: context.WorkerContext,
    before: torch.Tensor,
    boxes: list[Box],
    after: torch.Tensor,
    after_boxes: list[Box],
    threshold: float | None,
) -> dict[str, dict[str, Any]]:
    """Each detector's verdict as /detect crop=faces gives it: the upload on its boxes, the delivered file on the
    faces found on it again (p_fake null and label no_face where none is)."""
    out: dict[str, dict[str, Any]] = {}
    for loaded in ctx.zoo:
        cut, source = loaded.meta.operating_point(threshold)
        pb = most_fake(score_faces(loaded.detector, before, boxes))
        faces_after = score_faces(loaded.detector, after, after_boxes)
        pa = most_fake(faces_after)
        out[loaded.name] = {
            "sha256": loaded.sha256,
            "p_fake_before": pb,
            "p_fake_after": pa,
            "label_before": label_of(pb, cut),
            "label_after": label_of(pa, cut),
            "threshold": cut,
            "threshold_source": source,
            "faces_after": [v.to_json(cut) for v in faces_after],
        }
    return out


def _store_image(ctx: context.WorkerContext, job_id: str, png: bytes) -> None:
    ctx.conn.set(keys.result_png_key(job_id), png, ex=ctx.settings.result_ttl_s)


def _final_progress(job: Job, *, iteration: int, max_iterations: int, stage: str) -> None:
    """A finished job's last progress record: the iterations it actually ran. The reports are throttled
    (``PROGRESS_EVERY_S``) and a loop that stops early never reaches its final one, so without this the
    record of a finished job could lag its result."""
    last = job.meta.get("progress") or {}
    job.meta["progress"] = {
        "iteration": iteration,
        "max_iterations": max_iterations,
        "loss": last.get("loss"),
        "psnr": last.get("psnr"),
        "stage": stage,
        "fraction": 1.0,
        "eta_s": 0.0,
    }
    job.save_meta()


def attack(input_key: str, params: dict[str, Any]) -> dict[str, Any]:
    from models.attacks import registry
    from models.attacks.measure import attack_in_zoo

    ctx, job = context.get(), _current_job()
    _begin(ctx, job)
    ctx.zoo.refresh(ctx.settings.checkpoints_reload_s)  # a removed target then fails the job (LookupError)
    spec_job = AttackJob.from_json(params)
    spec = registry.get(spec_job.method)
    x = _load_input(ctx, input_key)
    outcome = attack_in_zoo(
        ctx.zoo, x, method=spec_job.method, target=spec_job.target, source=spec_job.source,
        params=spec_job.params, save_format=spec_job.save_format, defense=spec_job.defense, progress=_reporter(job),
        should_stop=_stop_check(ctx, job), crop=spec_job.crop,
        faces=[box_from_list(b) for b in spec_job.faces] or None, threshold=spec_job.threshold,
    )  # fmt: skip
    budget = _plan(ctx, job, AttackJob.KIND, params, x).steps
    ran = outcome.report.iterations
    early = " (stopped early)" if ran < budget else ""
    _final_progress(job, iteration=ran, max_iterations=budget, stage=f"{spec.name} done{early}")
    # The delivered image, losslessly: for jpeg75 these are the decoded JPEG pixels success was judged on.
    _store_image(ctx, job.id, outcome.delivered_png)
    return outcome.body
