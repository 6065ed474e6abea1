"""An audit's job functions, named by dotted path from the API (``core.audits.SHARD_FUNC``, ``ASSEMBLE_FUNC``).

``run_shard`` runs one shard of the audit's plan (``models.audit.runner``) on the detector the audit names, reading
only that shard's images from Redis, and stores its result; the shard that completes the set queues ``assemble``,
which writes the record and the report files into Redis. A shard's seed and images are fixed by the plan, so the
record does not depend on which worker ran which shard, or how often (docs/AUDIT.md, "As a service job").
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from redis import Redis

from core import audits
from core.audits import AuditSpec
from models.attacks.adaptive import resolve_defense
from models.audit import report, runner
from models.audit.profiles import Threat, audit_threats
from models.audit.runner import AuditData
from models.audit.threats import AuditTarget
from models.checkpoint import LoadedCheckpoint
from models.evaluation.run import environment
from models.images import decode_image
from workers import context
from workers.jobs import _begin, _current_job


@dataclass(frozen=True, eq=False)
class StoredAuditData(AuditData):
    """The audit's images as the API stored them in Redis, read one at a time (a shard reads only its own), decoded
    as ``AuditData`` reads a file (``models.images.decode_image``)."""

    conn: Redis | None = None
    key: str = ""
    max_pixels: int = 40_000_000

    def native(self, index: int) -> torch.Tensor:
        data = cast(bytes | None, None if self.conn is None else self.conn.hget(self.key, str(index)))
        if data is None:
            raise LookupError(f"image {self.items[index][0]} of the audit has expired ({self.key})")
        return decode_image(bytes(data), max_bytes=max(len(data), 1), max_pixels=self.max_pixels)


@dataclass
class Setup:
    spec: AuditSpec
    loaded: LoadedCheckpoint
    target: AuditTarget
    data: StoredAuditData
    threats: list[Threat]
    threshold_source: str


def _spec(conn: Redis, audit_id: str) -> AuditSpec:
    spec = audits.load_spec(conn, audit_id)
    if spec is None:
        raise LookupError(f"audit {audit_id} has expired or never existed")
    return spec


def _setup(ctx: context.WorkerContext, spec: AuditSpec) -> Setup:
    ctx.zoo.refresh(ctx.settings.checkpoints_reload_s)
    loaded = ctx.zoo.get(spec.model)  # a KeyError (a LookupError) when removed: the job fails at once
    threshold, source = loaded.meta.operating_point(spec.threshold)
    sources = {}
    for name in spec.transfer_from:  # each at its own operating threshold, as the command line loads them
        src = ctx.zoo.get(name)
        sources[src.name] = (src.detector.eval(), src.meta.operating_point()[0])
    defense = resolve_defense(spec.defense)
    target = AuditTarget(loaded.name, loaded.detector.eval(), threshold, sources=sources, defense=defense)
    data = StoredAuditData(Path(spec.dataset), spec.items, conn=ctx.conn, key=audits.images_key(spec.id),
                           max_pixels=ctx.settings.max_pixels)  # fmt: skip
    threats = audit_threats(spec.profile, sources=list(sources), defense=defense is not None, eps=spec.eps,
                            overrides=spec.overrides, l2=spec.l2_rms)  # fmt: skip
    return Setup(spec, loaded, target, data, threats, source)


def run_shard(audit_id: str, shard: str) -> dict[str, Any]:
    """Run the shard ``shard`` (a ``ShardPlan.key``) of audit ``audit_id`` and store its result."""
    ctx, job = context.get(), _current_job()
    _begin(ctx, job)
    spec = _spec(ctx.conn, audit_id)
    if audits.is_stopped(ctx.conn, audit_id):
        return {"audit": audit_id, "shard": shard, "skipped": "the audit was stopped"}
    s = _setup(ctx, spec)
    parts = {p.key: p for p in runner.plan(len(spec.items), s.threats, shard_size=spec.shard_size)}
    part = parts.get(shard)
    if part is None:
        raise ValueError(f"audit {audit_id} has no shard {shard!r}")
    result = runner.run_shard(s.target, s.data, part, seed=spec.seed)
    if audits.is_stopped(ctx.conn, audit_id):
        return {"audit": audit_id, "shard": shard, "skipped": "the audit was stopped while this shard ran"}
    if audits.record_shard(ctx.conn, ctx.settings, spec, part.key, result):
        audits.ensure_assembly(ctx.conn, ctx.settings, spec)
    audits.feed(ctx.conn, ctx.settings, spec, 1)  # the next shard takes this one's place in the queues
    return {"audit": audit_id, "shard": shard, "images": part.stop - part.start}


def assemble(audit_id: str) -> dict[str, Any]:
    """The record and the three report files of audit ``audit_id`` from every shard's result, stored in Redis."""
    ctx, job = context.get(), _current_job()
    _begin(ctx, job)
    spec = _spec(ctx.conn, audit_id)
    if audits.is_stopped(ctx.conn, audit_id):  # stopped after its last shard queued this job
        return {"audit": audit_id, "skipped": "the audit was stopped"}
    s = _setup(ctx, spec)
    raw = cast(dict[bytes, bytes], ctx.conn.hgetall(audits.results_key(audit_id)))
    results = {k.decode(): json.loads(v) for k, v in raw.items()}
    meta = {
        "detector": {
            "name": s.loaded.name,
            "sha256": s.loaded.sha256,
            "architecture": s.loaded.meta.architecture,
            "fitting": s.target.detector.fitting.describe(),
            "demo_data": s.loaded.meta.demo_data,
        },
        "threshold_source": s.threshold_source,
        "profile": {
            "name": spec.profile,
            "overrides": spec.overrides,
            "eps": None if spec.eps is None else list(spec.eps),
            "l2_rms": None if spec.l2_rms is None else list(spec.l2_rms),
        },
        "dataset": spec.dataset,
        "environment": environment(ctx.zoo.device),
    }
    record = runner.assemble(s.target, s.data, s.threats, results, meta=meta, seed=spec.seed,
                             shard_size=spec.shard_size)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dfg-audit-") as tmp:  # write_all's files, moved into Redis
        paths = report.write_all(record, report.gallery_of(results), runner.original_png(s.target, s.data), Path(tmp))
        files = {p.name: p.read_bytes() for p in paths.values()}
    with ctx.conn.pipeline(transaction=True) as pipe:
        for name, body in files.items():
            pipe.set(audits.report_key(audit_id, name), body, ex=ctx.settings.audit_ttl_s)
        pipe.expire(audits.spec_key(audit_id), ctx.settings.audit_ttl_s)  # the audit lives as long as its reports
        pipe.delete(audits.images_key(audit_id))  # the report holds what it shows of them: free Redis' memory
        audits.release_slot(pipe, spec.owner, audit_id)  # finished: the key's DFG_MAX_JOBS_PER_KEY slot is free
        pipe.execute()
    return {"audit": audit_id, "summary": record["summary"], "unreliable": record["unreliable"]}
