"""An audit through the service (docs/AUDIT.md, "As a service job"): real Redis, real worker processes, real HTTP.

The record must not depend on how many workers shared the audit, nor on a worker SIGKILLed in the middle of a shard.
"""

from __future__ import annotations

import io
import json
import math
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image
from redis import Redis
from rq.job import Job, JobStatus
from rq.worker import Worker

from app.auth import hash_key
from core import audits
from core.audits import AuditSpec
from core.keys import owner_jobs_key
from core.settings import Settings
from deepfake_guard.cli import main as cli
from tests.conftest import Processes, make_tiny_checkpoint, service_env, wait_for

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "audit.schema.json"
#: Generous: the CI machine is a loaded 2-core box (no timing is asserted).
AUDIT_DEADLINE_S = 420


def data_zip(n_fake: int = 6, n_real: int = 6, size: int = 32, top: str = "data") -> bytes:
    """A small data set: smooth fakes and noisy reals, as PNG, under ``top/fake`` and ``top/real``."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for label, n in (("fake", n_fake), ("real", n_real)):
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                if label == "fake":
                    pixels = (pixels // 64 * 64).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                z.writestr(f"{top}/{label}/{i:02d}.png", png.getvalue())
    return buf.getvalue()


def start_audit(base: str, body: bytes, headers: dict[str, str] | None = None) -> str:
    r = httpx.post(
        f"{base}/audits", files={"file": ("data.zip", body, "application/zip")},
        data={"profile": "quick", "eps": "8/255"}, headers=headers, timeout=120,
    )  # fmt: skip
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/audits/{r.json()['id']}"
    return str(r.json()["id"])


def wait_finished(base: str, audit_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        info = httpx.get(f"{base}/audits/{audit_id}", headers=headers, timeout=30).json()
        assert info["status"] not in ("failed", "stopped"), info
        return info if info["status"] == "finished" else None

    return wait_for(finished, AUDIT_DEADLINE_S, f"audit {audit_id} to finish", interval_s=0.5)


def record_of(base: str, audit_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/audits/{audit_id}/report.json", timeout=30)
    assert r.status_code == 200, r.text
    record = r.json()
    jsonschema.validate(record, json.loads(SCHEMA.read_text()))
    record.pop("environment")
    return dict(record)


def assert_same(a: Any, b: Any, where: str = "record") -> None:
    """Equal, floats to rounding (the shards ran in other processes)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def audit_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("audit-ckpt")
    make_tiny_checkpoint(d, "tiny-vgg", arch="vgg16_slim", seed=0)
    return d


def busy_worker(conn: Redis, names: set[str]) -> tuple[str, str] | None:
    """One of ``names`` (or its fast-lane thread) running an attack shard now, and that shard's job id."""
    for w in Worker.all(connection=conn):
        job_id = w.get_current_job_id()
        base = w.name.removesuffix("-fast")
        if base in names and job_id and "linf_suite" in str(Job.fetch(job_id, connection=conn).kwargs.get("shard")):
            return base, job_id
    return None


def frozen_mid_shard(conn: Redis, procs: dict[str, subprocess.Popen[bytes]]) -> str | None:
    """A worker stopped (SIGSTOP) while its attack shard is still running: the name, else None (the shard it was
    seen running ended before the stop: it goes on). A SIGKILL then surely lands mid-shard, however fast shards are
    on this machine, and the shard must run again."""
    found = busy_worker(conn, set(procs))
    if found is None:
        return None
    name, job_id = found
    procs[name].send_signal(signal.SIGSTOP)
    if Job.fetch(job_id, connection=conn).get_status() == JobStatus.STARTED:
        return name
    procs[name].send_signal(signal.SIGCONT)
    return None


@pytest.mark.slow
def test_the_record_is_the_same_with_one_worker_three_and_a_killed_one(
    processes: Processes, redis_url: str, audit_checkpoints: Path, tmp_path: Path
) -> None:
    env = service_env(redis_url, audit_checkpoints, DFG_HEARTBEAT_S="1", DFG_AUDIT_SHARD_SIZE="4")
    base = processes.api(env)
    body = data_zip()
    worker = [sys.executable, "-m", "workers", "--name"]
    procs = {"w0": processes.start([*worker, "w0"], env, "worker")}

    one = start_audit(base, body)
    info = wait_finished(base, one)
    assert info["done"] == info["total"] and all(p["done"] == p["total"] for p in info["progress"])
    baseline = record_of(base, one)
    assert baseline["data"] == {"n_fake": 6, "n_real": 6, "folder": "data"}
    assert [r["file"] for r in baseline["per_image"]][:2] == ["fake/00.png", "fake/01.png"]

    conn = Redis.from_url(redis_url)
    for name in ("w1", "w2"):
        procs[name] = processes.start([*worker, name], env, "worker")
    wait_for(lambda: {"w1", "w2"} <= {w.name for w in Worker.all(connection=conn)}, 120, "two more workers")
    # The command line's --queue: the folder zipped, sent, polled, and the same three files written.
    folder, out = tmp_path / "data", tmp_path / "out"
    zipfile.ZipFile(io.BytesIO(body)).extractall(tmp_path)
    assert cli(["audit", "tiny-vgg", str(folder), "--queue", base, "--eps", "8/255", "--out", str(out)]) == 0
    three = json.loads((out / "report.json").read_text())
    three.pop("environment")
    assert_same(three, baseline)
    assert {p.name for p in out.iterdir()} == {"report.json", "report.html", "per_image.csv"}
    specs = [audits.load_spec(conn, k.decode().split(":")[2]) for k in conn.scan_iter("dfg:audit:*:spec")]
    spec = max((s for s in specs if s is not None), key=lambda s: s.created_at)  # the command line's
    ran_on = {Job.fetch(j, connection=conn).worker_name for j, _, _ in spec.shards}
    assert len({n.removesuffix("-fast") for n in ran_on if n}) >= 2, ran_on  # the workers did share it

    killed = start_audit(base, body)
    victim = wait_for(lambda: frozen_mid_shard(conn, procs), AUDIT_DEADLINE_S, "a worker running an attack shard", 0.05)
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)
    wait_finished(base, killed)
    assert_same(record_of(base, killed), baseline)
    spec = audits.load_spec(conn, killed)
    assert spec is not None
    attempts = [int(Job.fetch(j, connection=conn).meta.get("attempts", 0)) for j, _, _ in spec.shards]
    assert max(attempts) >= 2, attempts  # the killed worker's shard ran again elsewhere
    for name in ("report.html", "per_image.csv"):
        assert httpx.get(f"{base}/audits/{killed}/{name}", timeout=30).status_code == 200


def test_exactly_one_stored_shard_completes_the_set_however_they_interleave(redis_url: str) -> None:
    conn = Redis.from_url(redis_url)
    keys = [f"clean@{i}" for i in range(40)]
    spec = AuditSpec(id="a" * 32, owner="public", model="m", profile="quick", dataset="d", items=(),
                     shards=tuple((f"job{i}", k, "q") for i, k in enumerate(keys)))  # fmt: skip
    settings = Settings(redis_url=redis_url)
    with ThreadPoolExecutor(8) as pool:  # every shard twice (a retry after its worker died), all at once
        completes = list(pool.map(lambda k: audits.record_shard(conn, settings, spec, k, {"k": k}), keys * 2))
    assert sum(completes) == 1
    assert conn.scard(audits.done_key(spec.id)) == 40 and conn.hlen(audits.results_key(spec.id)) == 40


KEY_A, KEY_B = "audit-cap-key-a-0123456789", "audit-cap-key-b-9876543210"
A, B = {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"Bearer {KEY_B}"}


def slots_of(conn: Redis, key: str) -> set[str]:
    """What counts toward the API key's DFG_MAX_JOBS_PER_KEY now."""
    return {m.decode() for m in conn.zrange(owner_jobs_key(hash_key(key)[:16]), 0, -1)}


def test_an_audit_holds_one_of_its_keys_job_slots_until_it_ends(
    processes: Processes, redis_url: str, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_API_KEYS=f"{hash_key(KEY_A)},{hash_key(KEY_B)}",
                      DFG_MAX_JOBS_PER_KEY="2")  # fmt: skip
    base = processes.api(env)
    conn = Redis.from_url(redis_url)
    body = data_zip(1, 1)

    def purify(headers: dict[str, str]) -> httpx.Response:
        png = zipfile.ZipFile(io.BytesIO(body)).read("data/fake/00.png")
        return httpx.post(f"{base}/purify", files={"file": ("a.png", png)}, data={"method": "jpeg"}, headers=headers,
                          timeout=60)  # fmt: skip

    first = start_audit(base, body, A)
    assert purify(A).status_code == 202  # an ordinary job beside it: the key's two slots are taken
    refused = httpx.post(f"{base}/audits", files={"file": ("data.zip", body)}, headers=A, timeout=60)
    ordinary = purify(A)
    for resp in (refused, ordinary):  # the same 429 problem for an audit as for a job
        assert resp.status_code == 429 and resp.headers["content-type"].startswith("application/problem+json")
        assert int(resp.headers["retry-after"]) >= 1
    assert refused.json() | {"instance": None} == ordinary.json() | {"instance": None}
    assert "2 jobs queued or running, audits included (limit 2)" in refused.json()["detail"]
    start_audit(base, body, B)  # another key has its own slots

    assert httpx.delete(f"{base}/audits/{first}", headers=A, timeout=30).json()["status"] == "stopped"
    second = start_audit(base, body, A)  # the stopped audit's slot is free
    assert audits.slot_member(first) not in slots_of(conn, KEY_A)
    assert 0 < conn.ttl(audits.slot_key(second)) <= Settings().audit_ttl_s  # an audit never ended expires, slot too
    conn.delete(audits.slot_key(second))  # as its TTL does
    third = start_audit(base, body, A)  # the expired audit no longer counts
    assert audits.slot_member(second) not in slots_of(conn, KEY_A)

    # A worker without the audited detector: its shards fail; the worker gives the slot back at once (nobody need
    # poll), and the audit is failed when next polled.
    other = tmp_path / "other"
    other.mkdir()
    make_tiny_checkpoint(other, "tiny-resnet", arch="resnet18", seed=1)
    processes.worker(service_env(redis_url, other, DFG_DEFAULT_MODEL="tiny-resnet"))
    spec = audits.load_spec(conn, third)
    assert spec is not None

    def a_shard_failed() -> bool:
        return any(j is not None and j.get_status() == "failed"
                   for j in Job.fetch_many([s for s, _, _ in spec.shards], connection=conn))  # fmt: skip

    wait_for(a_shard_failed, AUDIT_DEADLINE_S, "a shard of the audit to fail")
    wait_for(lambda: audits.slot_member(third) not in slots_of(conn, KEY_A), 60, "the failed audit's slot to be free")
    assert not conn.exists(audits.pending_key(third))  # no more of its shards are queued
    info = httpx.get(f"{base}/audits/{third}", headers=A, timeout=30).json()
    assert info["status"] == "failed" and "unknown model 'tiny-vgg'" in info["error"]
    assert audits.slot_member(third) not in slots_of(conn, KEY_A)


@pytest.mark.slow
def test_the_service_audit_with_transfer_a_defence_and_overrides_is_the_command_lines(
    processes: Processes, redis_url: str, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    # Shards of 3 of the 4 images: every threat's result is merged from two shards, as the command line's.
    env = service_env(redis_url, tiny_checkpoints, DFG_AUDIT_SHARD_SIZE="3", DFG_API_KEYS=hash_key(KEY_A),
                      DFG_MAX_JOBS_PER_KEY="1")  # fmt: skip
    base = processes.api(env)
    processes.worker(env)
    body = data_zip(2, 2)
    zipfile.ZipFile(io.BytesIO(body)).extractall(tmp_path)
    options = ["--eps", "8/255", "--defense", "jpeg", "--defense-quality", "60", "--set", "eot_pgd.steps=2",
               "--set", "eot_pgd.eot=1", "--set", "transfer.steps=2", "--set", "through_defense.steps=2", "--seed",
               "3"]  # fmt: skip
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert cli(["audit", str(tiny_checkpoints / "tiny-vgg"), str(tmp_path / "data"), "--transfer-from",
                str(tiny_checkpoints / "tiny-resnet"), "--shard-size", "3", "--threads", "1", "--out", str(local),
                *options]) == 0  # fmt: skip
    # --queue names the service's detectors, and forwards the defence, the overrides and the seed
    assert cli(["audit", "tiny-vgg", str(tmp_path / "data"), "--transfer-from", "tiny-resnet", "--queue", base,
                "--api-key", KEY_A, "--out", str(remote), *options]) == 0  # fmt: skip
    here, there = (json.loads((d / "report.json").read_text()) for d in (local, remote))
    for record in (here, there):
        record.pop("environment")
    assert_same(there, here)
    assert {"transfer", "through a defence"} <= {r["family"] for r in there["threats"]}
    assert there["profile"]["overrides"]["eot_pgd"] == {"steps": 2, "eot": 1} and there["seed"] == 3
    assert there["defense"]["purifier"] == "jpeg" and there["defense"]["params"] == {"quality": 60}
    assert slots_of(Redis.from_url(redis_url), KEY_A) == set()  # finished: its slot is free for the next audit
    start_audit(base, body, A)
