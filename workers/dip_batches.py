"""Batched DIP across queued jobs: one network per image, many images per launch (docs/PERFORMANCE.md).

A DIP job that starts (the *leader*) looks at the queue for DIP jobs with the same settings and
working size, claims up to ``dip_batch_max - 1`` of them with a Redis key that expires unless the
leader keeps refreshing it, and purifies all images in one batch (``dip_purify`` runs independent
networks per image, so each result is what the job would get alone). It then publishes each
follower's output. The followers stay ordinary queued RQ jobs throughout: when a worker picks one
up it finds its output ready, so RQ's own bookkeeping is never
bypassed; a worker that picks one up while its leader runs puts it back in the queue rather than wait
(workers/worker.py). If the leader dies its claims expire and the followers purify themselves: a claim can
delay a job, never lose it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from core import keys
from core.jobs import PurifyJob
from models.progress import Cancelled
from models.purify.registry import PurifierSpec
from workers import context

SCAN_QUEUED = 64
WAIT_POLL_S = 0.5


@dataclass
class Follower:
    job: Job
    x: torch.Tensor  # the upload, 3 x H x W
    work: torch.Tensor  # what DIP sees (fitted to purify_max_side)


def claim_ttl(ctx: context.WorkerContext) -> int:
    return ctx.settings.heartbeat_s * 3 + 2


def claim(
    ctx: context.WorkerContext,
    leader: Job,
    job: PurifyJob,
    spec: PurifierSpec,
    shape: tuple[int, ...],
    prepare: Any,
) -> list[Follower]:
    """Claim queued jobs compatible with ``leader`` (same ``PurifyJob.batch_signature``, same working size);
    ``prepare(input_key) -> (x, work)``."""
    limit = ctx.settings.dip_batch_max - 1
    if limit <= 0 or not spec.batchable:
        return []
    signature = job.batch_signature()
    queued = Queue(leader.origin, connection=ctx.conn).get_job_ids(0, SCAN_QUEUED)
    followers: list[Follower] = []
    for job_id, queued_job in zip(queued, Job.fetch_many(queued, connection=ctx.conn), strict=True):
        if len(followers) >= limit:
            break
        if queued_job is None or job_id == leader.id or queued_job.func_name != PurifyJob.FUNC:
            continue
        if queued_job.get_status(refresh=False) != JobStatus.QUEUED:
            continue
        try:
            their = PurifyJob.from_json(cast(dict[str, Any], queued_job.kwargs.get("params", {})))
        except (KeyError, TypeError):
            continue  # not a purify job of this version: its own run will report the problem
        if their.batch_signature() != signature:
            continue
        try:
            x, work = prepare(queued_job.kwargs["input_key"])
        except (LookupError, ValueError):
            continue  # its own run will report the problem
        if tuple(work.shape) != tuple(shape):
            continue
        if ctx.conn.set(keys.claim_key(job_id), leader.id, nx=True, ex=claim_ttl(ctx)):
            queued_job.meta["batched_with"] = leader.id
            queued_job.save_meta()
            followers.append(Follower(queued_job, x, work))
    return followers


def refresh(ctx: context.WorkerContext, leader_id: str, followers: list[Follower]) -> None:
    if followers:
        with ctx.conn.pipeline() as pipe:
            for f in followers:
                pipe.set(keys.claim_key(f.job.id), leader_id, ex=claim_ttl(ctx))
            pipe.execute()


def mirror_progress(followers: list[Follower], progress: dict[str, Any]) -> None:
    for f in followers:
        f.job.meta["progress"] = progress
        f.job.save_meta()


def release(ctx: context.WorkerContext, followers: list[Follower]) -> None:
    """Give claimed jobs back (the leader stopped or failed): they will purify themselves."""
    if followers:
        ctx.conn.delete(*[keys.claim_key(f.job.id) for f in followers])


def publish(ctx: context.WorkerContext, job_id: str, result: dict[str, Any], png: bytes) -> None:
    """A claimed job's output: its image where its result is served from (stored once), its result JSON for the
    job's own run to return."""
    ttl = ctx.settings.result_ttl_s
    with ctx.conn.pipeline() as pipe:
        pipe.set(keys.result_png_key(job_id), png, ex=ttl)
        pipe.set(keys.batched_result_key(job_id), json.dumps(result), ex=ttl)
        pipe.delete(keys.claim_key(job_id))
        pipe.execute()


def held_by_leader(conn: Redis, job_id: str) -> bool:
    """Whether a live leader has claimed this job and not yet published its output (its claim expires with the
    leader: ``claim_ttl``)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.exists(keys.claim_key(job_id))
        pipe.exists(keys.batched_result_key(job_id))
        claimed, published = pipe.execute()
    return bool(claimed) and not published


def in_a_batch(ctx: context.WorkerContext, job_id: str) -> bool:
    """Whether a leader has claimed this job or already published its output."""
    return bool(ctx.conn.exists(keys.claim_key(job_id), keys.batched_result_key(job_id)))


def collect(ctx: context.WorkerContext, job: Job, should_stop: Any) -> dict[str, Any] | None:
    """For a job another worker claimed: its published result (its image is already stored), waiting while that
    leader is alive.

    Returns None when the job was never claimed or its leader gave it up (it must purify itself).
    """
    while True:
        raw_json = cast(bytes | None, ctx.conn.getdel(keys.batched_result_key(job.id)))
        if raw_json is not None:
            return dict(json.loads(raw_json))
        if not ctx.conn.exists(keys.claim_key(job.id)):
            return None
        if should_stop():
            raise Cancelled(0)
        time.sleep(WAIT_POLL_S)
