"""POST /audits and its answers (docs/AUDIT.md, "As a service job"): a zip bounded and read safely (a zip bomb, a
path-traversal name, non-images, no fake/ or real/: each a clear 4xx problem+json, nothing written anywhere),
progress and the 404 before the report exists, DELETE, and audits owned by the API key that made them. The API
in-process (TestClient runs the real lifespan and middlewares) against the real Redis; no worker runs here:
tests/workers/test_audit_jobs.py runs audits through real workers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from core import audits
from tests.app.test_api import assert_problem, make_client
from tests.workers.test_audit_jobs import data_zip

KEY_A, KEY_B = "audit-key-a-0123456789", "audit-key-b-9876543210"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
SMALL = {"max_upload_bytes": 1 << 20, "audit_max_bytes": 4 << 20}


def zip_of(members: dict[str, bytes], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def post(c: TestClient, body: bytes, headers: dict[str, str] | None = None, **data: str):  # type: ignore[no-untyped-def]
    return c.post("/audits", files={"file": ("set.zip", body, "application/zip")}, data=data, headers=headers)


@pytest.fixture
def client(
    tiny_checkpoints: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.chdir(tmp_path)  # anything written relative to the working folder would land here
    with make_client(tiny_checkpoints, redis_url, **SMALL) as c:
        yield c


def audit_keys(redis_url: str) -> list[bytes]:
    return list(Redis.from_url(redis_url).scan_iter("dfg:audit:*"))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def png_bytes() -> bytes:
    return zipfile.ZipFile(io.BytesIO(data_zip(1, 0))).read("data/fake/00.png")


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("fake/a.png", png_bytes())
        link = zipfile.ZipInfo("fake/b.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (zip_of({"fake/a.png": bytes(2 << 20)}), 413, "'fake/a.png' expands to 2097152 bytes"),  # declared size
        (zip_of({"fake/a.png": bytes(600 << 10)}), 413, "DFG_AUDIT_MAX_RATIO"),  # a very high ratio, under 1 MB
        (zip_of({"../../x.png": b"x", "fake/a.png": b"x"}), 422, "'../../x.png' climbs out of the folder"),
        (zip_of({"/tmp/abs.png": b"x"}), 422, "'/tmp/abs.png' is an absolute path"),
        (zip_of({"a/b/c/d/e/f/g/h/i/j/fake.png": b"x"}), 422, "folders deep"),
        (symlink_zip(), 422, "'fake/b.png' is a symbolic link"),
        (zip_of({"fake/notes.txt": b"hi", "real/run.exe": b"MZ", "fake/a.png": png_bytes()}), 422,
         "['fake/notes.txt', 'real/run.exe']"),
        (zip_of({"fake/a.png": b"not an image at all"}), 422, "fake/a.png:"),
        (zip_of({"cats/a.png": png_bytes(), "dogs/b.png": png_bytes()}), 422, "found ['cats', 'dogs']"),
        (zip_of({"set/cats/a.png": png_bytes()}), 422, "found ['set'] (and below them ['set/cats'])"),
        (zip_of({"__MACOSX/._a.png": b"x", ".DS_Store": b"x"}), 422, "holds no files"),
        (b"PK\x03\x04 no zip", 422, "is not a readable zip file"),
    ],
    ids=["declared-size", "ratio", "traversal", "absolute", "depth", "symlink", "non-images", "not-an-image",
         "no-fake-or-real", "no-fake-or-real-below", "only-junk", "not-a-zip"],
)  # fmt: skip
def test_a_bad_zip_is_a_clear_4xx_and_nothing_is_written(
    client: TestClient, redis_url: str, tmp_path: Path, body: bytes, status: int, needle: str
) -> None:
    before = files_under(tmp_path)
    assert_problem(post(client, body), status, needle)
    assert audit_keys(redis_url) == []  # nothing stored
    assert files_under(tmp_path) == before  # nothing written in the working folder
    assert not (tmp_path.parent.parent / "x.png").exists() and not Path("/tmp/abs.png").exists()


def test_the_zip_limits_are_the_settings(tiny_checkpoints: Path, redis_url: str) -> None:
    body = data_zip(3, 3)
    with make_client(tiny_checkpoints, redis_url, audit_max_images=5) as c:
        assert_problem(post(c, body), 413, "holds 6 images; an audit takes at most 5 (DFG_AUDIT_MAX_IMAGES)")
    with make_client(tiny_checkpoints, redis_url, audit_max_uncompressed_bytes=2048) as c:
        assert_problem(post(c, body), 413, "DFG_AUDIT_MAX_UNCOMPRESSED_BYTES")


def test_only_post_audits_takes_a_body_above_the_upload_limit(client: TestClient) -> None:
    blobs = {f"fake/blob{i}.bin": os.urandom(800 << 10) for i in range(2)}
    big = zip_of(blobs, compress=False)  # 1.6 MB: above the 1 MB upload limit
    assert_problem(post(client, big), 422, "may hold only images")  # read: the audit's own limit let it through
    detect = client.post("/detect", files={"file": ("a.png", big, "image/png")})
    assert_problem(detect, 413, "DFG_MAX_UPLOAD_BYTES")
    huge = zip_of({"fake/blob.bin": os.urandom(5 << 20)}, compress=False)
    assert_problem(post(client, huge), 413, "DFG_AUDIT_MAX_BYTES")


def test_bad_parameters_are_named(client: TestClient) -> None:
    body = data_zip(1, 1)
    assert_problem(post(client, body, model="nope"), 404, "nope")
    assert_problem(post(client, body, eps="abc"), 422, "eps")
    assert_problem(post(client, body, eps="2"), 422, "eps")
    assert_problem(post(client, body, profile="huge"), 422, "profile")


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        ({"transfer_from": "nope"}, 404, "unknown model 'nope'; choose one of ['tiny-resnet', 'tiny-vgg']"),
        ({"transfer_from": "tiny-vgg"}, 422, "transfer_from='tiny-vgg' is the audited detector"),
        ({"transfer_from": "tiny-resnet, tiny-resnet"}, 422, "transfer_from names ['tiny-resnet'] more than once"),
        ({"defense": "blur"}, 422, "defense: Input should be 'none', 'dip', 'jpeg'"),
        ({"defense_quality": "60"}, 422, "apply only with a defense"),
        ({"defense": "jpeg", "defense_quality": "0"}, 422, "defense_quality: Input should be greater than"),
        ({"defense": "jpeg", "defense_kernel_size": "5"}, 422, "['defense_kernel_size'] do not apply to method='jpeg'"),
        ({"defense": "jpeg", "eot_samples": "4"}, 422, "eot_samples applies only to a randomised purifier"),
        ({"defense": "dip", "bpda_iterations": "30000"}, 422, "bpda_iterations=30000 exceeds the limit of 20000"),
        ({"set": "eot_pgd.steps"}, 422, "set 'eot_pgd.steps': expected THREAT.PARAM=VALUE"),
        ({"set": "nosuch.steps=3"}, 422, "'nosuch'"),
        ({"set": "eot_pgd.stepz=3"}, 422, "threat 'eot_pgd' takes ['eot', 'eps', 'steps'], not ['stepz']"),
        ({"set": "eot_pgd.steps=0"}, 422, "eot_pgd.steps"),
        ({"set": "linf_suite.eps=0.1"}, 422, "the white-box curve's budgets are the audit's eps"),
        ({"set": "transfer.source=tiny-resnet"}, 422, "the transfer sources are the audit's transfer_from"),
        ({"set": "transfer.steps=2"}, 422, "set ['transfer']: this audit runs no such threat; transfer needs a"),
        ({"set": "through_defense.steps=2"}, 422, "through_defense needs a defence"),
        ({"seed": "-1"}, 422, "seed: Input should be greater than or equal to 0"),
        ({"set": "l2_suite.rms=0.1"}, 422, "the white-box L2 curve's budgets are the audit's l2_rms"),
        ({"l2_rms": "two"}, 422, "l2_rms: "),
        ({"l2_rms": "2"}, 422, "l2_suite.rms"),
    ],
    ids=["unknown-source", "audited-source", "repeated-source", "unknown-defense", "defense-param-alone",
         "defense-param-bounds", "another-purifiers-param", "eot-deterministic", "dip-cap", "set-malformed",
         "set-unknown-threat", "set-unknown-param", "set-bad-value", "set-eps", "set-source", "set-no-transfer",
         "set-no-defence", "seed", "set-l2", "l2-not-a-number", "l2-out-of-range"],
)  # fmt: skip
def test_bad_audit_options_are_named_before_the_upload_is_read(
    client: TestClient, redis_url: str, data: dict[str, str], status: int, needle: str
) -> None:
    # The body is no zip at all: an answer about the option shows it was checked before the upload was read.
    assert_problem(post(client, b"PK\x03\x04 no zip", **data), status, needle)
    assert audit_keys(redis_url) == []


def test_the_audit_keeps_its_sources_defence_overrides_and_seed(client: TestClient, redis_url: str) -> None:
    resp = client.post(
        "/audits", files={"file": ("set.zip", data_zip(1, 1), "application/zip")},
        data={"transfer_from": ["tiny-resnet"], "defense": "dip", "defense_max_iterations": "50",
              "set": ["eot_pgd.steps=3", "through_defense.steps=2"], "seed": "7", "eps": "8/255",
              "l2_rms": "3/255"},
    )  # fmt: skip
    assert resp.status_code == 202, resp.text
    conn = Redis.from_url(redis_url)
    spec = audits.load_spec(conn, resp.json()["id"])
    assert spec is not None and spec.seed == 7 and spec.transfer_from == ("tiny-resnet",)
    # DIP is randomised: the quick profile's EOT count, as the command line gives it (docs/AUDIT.md, Profiles)
    assert spec.defense == {"method": "dip", "max_iterations": 50, "eot_samples": 2}
    assert spec.overrides == {"eot_pgd": {"steps": 3}, "through_defense": {"steps": 2}}
    assert spec.l2_rms == (3 / 255,)
    threats = {p["threat"] for p in client.get(resp.headers["Location"]).json()["progress"]}
    assert [t for t in threats if t.startswith("l2_suite")] == ["l2_suite(budget=quick, rms=3/255)"]
    assert {"transfer(eps=8/255, source=tiny-resnet, steps=10)", "through_defense(eps=4/255, steps=2)",
            "eot_pgd(eot=4, eps=4/255, steps=3)"} <= threats  # fmt: skip
    standard = post(client, data_zip(1, 1), defense="dip", profile="standard")
    spec = audits.load_spec(conn, standard.json()["id"])
    assert spec is not None and spec.defense == {"method": "dip", "eot_samples": 20}
    given = post(client, data_zip(1, 1), defense="dip", eot_samples="5")
    spec = audits.load_spec(conn, given.json()["id"])
    assert spec is not None and spec.defense == {"method": "dip", "eot_samples": 5}


def test_a_spec_stored_before_the_options_existed_still_reads(redis_url: str) -> None:
    old = {"id": "a" * 32, "owner": "public", "model": "tiny-vgg", "profile": "quick", "dataset": "d",
           "items": [["fake/a.png", 0]], "eps": None, "threshold": None, "seed": 0, "shard_size": 16,
           "created_at": 1.0, "shards": [["j", "clean@0", "q"]]}  # fmt: skip
    spec = audits.AuditSpec.from_json(json.dumps(old))
    assert spec.transfer_from == () and spec.defense is None and spec.overrides == {}
    assert audits.AuditSpec.from_json(spec.to_json()) == spec


def test_an_audit_is_queued_as_shards_and_its_report_is_404_until_finished(client: TestClient, redis_url: str) -> None:
    body = data_zip(2, 1, top="set")
    buf = io.BytesIO(body)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("set/.DS_Store", b"x")
        z.writestr("__MACOSX/set/._00.png", b"x")
        z.writestr(zipfile.ZipInfo("set/fake/"), b"")  # a folder entry, as `zip -r` writes them: not worth a word
    resp = post(client, buf.getvalue(), eps="2/255, 8/255")
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["images"] == 3 and accepted["skipped"] == ["__MACOSX/set/._00.png", "set/.DS_Store"]
    info = client.get(resp.headers["Location"]).json()
    assert info["status"] == "queued" and info["done"] == 0 and info["eta_s"] is None
    threats = {p["threat"] for p in info["progress"]}
    assert "linf_suite(budget=quick, eps=2/255)" in threats and "linf_suite(budget=quick, eps=8/255)" in threats
    assert sum(p["total"] for p in info["progress"]) == info["total"] == accepted["shards"]
    conn = Redis.from_url(redis_url)
    lanes = {q: conn.llen(f"rq:queue:{q}") for q in ("deepfake-guard", "deepfake-guard-slow")}
    assert lanes["deepfake-guard"] > 0 and lanes["deepfake-guard-slow"] > 0  # cheap shards and attacks apart
    assert sum(lanes.values()) == info["total"]
    assert_problem(client.get(f"/audits/{accepted['id']}/report.json"), 404, "is queued (0/")
    stopped = client.delete(f"/audits/{accepted['id']}").json()
    assert stopped["status"] == "stopped"
    assert conn.llen("rq:queue:deepfake-guard") + conn.llen("rq:queue:deepfake-guard-slow") == 0
    assert_problem(client.get(f"/audits/{accepted['id']}/per_image.csv"), 404, "is stopped")
    assert_problem(client.get("/audits/0123456789abcdef0123456789abcdef"), 404, "no audit")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_an_audit_belongs_to_the_key_that_made_it(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, api_keys=f"{digest(KEY_A)},{digest(KEY_B)}") as c:
        resp = post(c, data_zip(1, 1), A)
        assert resp.status_code == 202, resp.text
        location = resp.headers["Location"]
        assert c.get(location, headers=A).status_code == 200
        for method, path in (("GET", location), ("DELETE", location), ("GET", f"{location}/report.html")):
            assert_problem(c.request(method, path, headers=B), 404, "no audit")
        shard = f"{resp.json()['id']}-s0"
        assert c.get(f"/jobs/{shard}", headers=A).status_code == 200
        assert c.get(f"/jobs/{shard}", headers=B).status_code == 404
        assert c.get(location, headers=A).json()["status"] == "queued"  # B's DELETE did nothing


def test_a_poll_queues_the_assembly_a_dead_worker_did_not(client: TestClient, redis_url: str) -> None:
    resp = post(client, data_zip(1, 1))
    audit_id = resp.json()["id"]
    conn = Redis.from_url(redis_url)
    spec = audits.load_spec(conn, audit_id)
    assert spec is not None
    for _, key, _ in spec.shards:  # every result stored, as by workers that then died before queueing the assembly
        conn.sadd(audits.done_key(audit_id), key)
    for _ in range(2):
        info = client.get(f"/audits/{audit_id}").json()
        assert info["status"] == "started" and info["done"] == info["total"]
    queued = [j.decode() for j in conn.lrange("rq:queue:deepfake-guard", 0, -1)]
    assert queued.count(audits.assembly_job_id(audit_id)) == 1


def test_an_audit_keeps_only_a_few_shards_queued_and_a_poll_refills_the_line(
    tiny_checkpoints: Path, redis_url: str
) -> None:
    conn = Redis.from_url(redis_url)
    with make_client(tiny_checkpoints, redis_url, audit_queued_shards=2) as c:
        accepted = post(c, data_zip(1, 1)).json()
        queues = ("rq:queue:deepfake-guard", "rq:queue:deepfake-guard-slow")
        assert sum(conn.llen(q) for q in queues) == 2  # the rest wait in the audit's own line
        assert conn.llen(audits.pending_key(accepted["id"])) == accepted["shards"] - 2
        conn.delete(*queues)  # two workers took them and died
        conn.lpop(audits.pending_key(accepted["id"]))  # and one more was popped by a worker that died at once
        for name in (audits.shard_job_id(accepted["id"], i) for i in range(2)):
            conn.delete(f"rq:job:{name}")
        assert c.get(f"/audits/{accepted['id']}").json()["status"] == "queued"
        queued = [j.decode() for q in queues for j in conn.lrange(q, 0, -1)]
        assert sorted(queued) == sorted(audits.shard_job_id(accepted["id"], i) for i in range(3))  # queued again
