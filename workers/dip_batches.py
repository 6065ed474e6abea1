"""Batched DIP across queued jobs (issue 6): one network per image, many images per launch.

A DIP job that starts (the *leader*) looks at the queue for DIP jobs with the same settings and
working size, claims up to ``dip_batch_max - 1`` of them with a Redis key that expires unless the
leader keeps refreshing it, and purifies all images in one batch (``dip_purify`` runs independent
networks per image, so each result is what the job would get alone). It then publishes each
follower's output. The followers stay ordinary queued RQ jobs throughout: when a worker picks one
up it finds its output ready (or waits for a live leader), so RQ's own bookkeeping is never
bypassed. If the leader dies its claims expire and the followers purify themselves: a claim can
delay a job, never lose it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from rq import Queue
from rq.job import Job, JobStatus

from core import keys
from models.progress import Cancelled
from workers import context

SCAN_QUEUED = 64
WAIT_POLL_S = 0.5


@dataclass
class Follower:
    job: Job
    x: torch.Tensor  # the upload, 3 x H x W
    work: torch.Tensor  # what DIP sees (fitted to purify_max_side)


def signature(params: dict[str, Any]) -> tuple[Any, ...]:
    """Jobs batch together when every DIP setting matches (the seed included: it fixes the network)."""
    keys = ("method", "preset", "max_iterations", "stop", "seed")
    return tuple(params.get(k) for k in keys)


def claim_ttl(rt: context.WorkerContext) -> int:
    return rt.settings.heartbeat_s * 3 + 2


def claim(
    rt: context.WorkerContext, leader: Job, params: dict[str, Any], shape: tuple[int, ...], prepare: Any
) -> list[Follower]:
    """Claim queued DIP jobs compatible with ``leader``; ``prepare(input_key) -> (x, work)``."""
    limit = rt.settings.dip_batch_max - 1
    if limit <= 0 or params.get("method") != "dip":
        return []
    queued = Queue(leader.origin, connection=rt.conn).get_job_ids(0, SCAN_QUEUED)
    followers: list[Follower] = []
    for job_id, job in zip(queued, Job.fetch_many(queued, connection=rt.conn), strict=True):
        if len(followers) >= limit:
            break
        if job is None or job_id == leader.id or job.func_name != keys.PURIFY_FUNC:
            continue
        if job.get_status(refresh=False) != JobStatus.QUEUED:
            continue
        their = cast(dict[str, Any], job.kwargs.get("params", {}))
        if signature(their) != signature(params):
            continue
        try:
            x, work = prepare(job.kwargs["input_key"])
        except (LookupError, ValueError):
            continue  # its own run will report the problem
        if tuple(work.shape) != tuple(shape):
            continue
        if rt.conn.set(keys.claim_key(job_id), leader.id, nx=True, ex=claim_ttl(rt)):
            job.meta["batched_with"] = leader.id
            job.save_meta()
            followers.append(Follower(job, x, work))
    return followers


def refresh(rt: context.WorkerContext, leader_id: str, followers: list[Follower]) -> None:
    if followers:
        with rt.conn.pipeline() as pipe:
            for f in followers:
                pipe.set(keys.claim_key(f.job.id), leader_id, ex=claim_ttl(rt))
            pipe.execute()


def mirror_progress(followers: list[Follower], progress: dict[str, Any]) -> None:
    for f in followers:
        f.job.meta["progress"] = progress
        f.job.save_meta()


def release(rt: context.WorkerContext, followers: list[Follower]) -> None:
    """Give claimed jobs back (the leader stopped or failed): they will purify themselves."""
    if followers:
        rt.conn.delete(*[keys.claim_key(f.job.id) for f in followers])


def publish(rt: context.WorkerContext, job_id: str, result: dict[str, Any], png: bytes) -> None:
    ttl = rt.settings.result_ttl_s
    with rt.conn.pipeline() as pipe:
        pipe.set(keys.batched_result_key(job_id, "json"), json.dumps(result), ex=ttl)
        pipe.set(keys.batched_result_key(job_id, "png"), png, ex=ttl)
        pipe.delete(keys.claim_key(job_id))
        pipe.execute()


def in_a_batch(rt: context.WorkerContext, job_id: str) -> bool:
    """Whether a leader has claimed this job or already published its output."""
    return bool(rt.conn.exists(keys.claim_key(job_id), keys.batched_result_key(job_id, "json")))


def collect(rt: context.WorkerContext, job: Job, should_stop: Any) -> tuple[dict[str, Any], bytes] | None:
    """For a job another worker claimed: its published output, waiting while that leader is alive.

    Returns None when the job was never claimed or its leader gave it up (it must purify itself).
    """
    while True:
        raw_json = cast(bytes | None, rt.conn.get(keys.batched_result_key(job.id, "json")))
        raw_png = cast(bytes | None, rt.conn.get(keys.batched_result_key(job.id, "png")))
        if raw_json is not None and raw_png is not None:
            rt.conn.delete(keys.batched_result_key(job.id, "json"), keys.batched_result_key(job.id, "png"))
            return dict(json.loads(raw_json)), bytes(raw_png)
        if not rt.conn.exists(keys.claim_key(job.id)):
            return None
        if should_stop():
            raise Cancelled(0)
        time.sleep(WAIT_POLL_S)
