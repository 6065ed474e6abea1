"""The API in-process (TestClient runs the real lifespan) against the real bundled Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from core.settings import Settings
from tests import imagefiles as files
from workers.metrics import Presence

PROBLEM = "application/problem+json"


def make_client(tmp: Path, redis_url: str | None, **overrides: object) -> TestClient:
    settings = Settings(checkpoints_dir=tmp, redis_url=redis_url, default_model="tiny-vgg", device="cpu", **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings), raise_server_exceptions=True)


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url, max_pixels=1_000_000) as c:
        yield c


def png() -> bytes:
    return files.encode(files.gradient_rgb(), "PNG")


def assert_problem(resp, status: int, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and needle.lower() in body["detail"].lower(), body


def test_detect_returns_p_fake_label_model_and_sha256(client: TestClient, tiny_checkpoints: Path) -> None:
    resp = client.post(
        "/detect", files=[("file", ("a.png", png(), "image/png")), ("file", ("b.jpg", files.cmyk_jpeg(), "image/jpeg"))]
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["results"]) == 2
    sha = (tiny_checkpoints / "tiny-vgg.json").read_text()
    for r in body["results"]:
        assert 0.0 <= r["p_fake"] <= 1.0
        assert r["label"] == ("fake" if r["p_fake"] >= 0.5 else "real")
        assert r["model"]["name"] == "tiny-vgg" and r["model"]["sha256"] in sha
    assert body["results"][0]["width"] == 40 and body["results"][0]["height"] == 30


def test_threshold_decides_the_label(client: TestClient) -> None:
    low = client.post("/detect", files={"file": ("a.png", png())}, data={"threshold": "0"}).json()
    high = client.post("/detect", files={"file": ("a.png", png())}, data={"threshold": "1"}).json()
    assert low["results"][0]["label"] == "fake"
    assert high["results"][0]["label"] == ("fake" if high["results"][0]["p_fake"] >= 1 else "real")


def test_model_choice(client: TestClient) -> None:
    body = client.post("/detect", files={"file": ("a.png", png())}, data={"model": "tiny-resnet"}).json()
    assert body["model"]["name"] == "tiny-resnet"


@pytest.mark.parametrize(
    ("name", "data", "status", "needle"),
    [
        ("notes.txt", b"just some text, not an image\n", 422, "not a recognisable image"),
        ("cut.jpg", files.truncated_jpeg(), 422, "truncated"),
        ("empty.png", b"", 422, "0 bytes"),
        ("bomb.png", files.png_bomb_header(), 413, "pixel"),
        ("anim.gif", files.animated_gif(), 415, "GIF"),
    ],
)
def test_bad_images_get_a_named_4xx(client: TestClient, name: str, data: bytes, status: int, needle: str) -> None:
    resp = client.post("/detect", files={"file": (name, data)})
    assert_problem(resp, status, needle)
    assert name in resp.json()["detail"] or status == 413
    # the server keeps serving
    assert client.post("/detect", files={"file": ("ok.png", png())}).status_code == 200


def lying_jpeg(width: int, height: int) -> bytes:
    """A whole 64 x 64 JPEG (its end marker included) whose frame header claims ``width`` x ``height`` pixels."""
    data = bytearray(files.encode(files.gradient_rgb(64, 64), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_jpeg_claiming_more_pixels_than_its_bytes_hold_is_422(tiny_checkpoints: Path, redis_url: str) -> None:
    # 1 KB claiming 6000 x 6000: libjpeg filled the missing scan with grey and the API decoded 36 Mpx for seconds.
    with make_client(tiny_checkpoints, redis_url) as c:
        resp = c.post("/detect", files={"file": ("liar.jpg", lying_jpeg(6000, 6000))})
        assert_problem(resp, 422, "truncated or its header is wrong")
        assert "6000 x 6000" in resp.json()["detail"] and "liar.jpg" in resp.json()["detail"]


def test_unusual_but_valid_images_are_scored(client: TestClient) -> None:
    for name, data in [("cmyk.jpg", files.cmyk_jpeg()), ("gray16.png", files.png16_gray())]:
        resp = client.post("/detect", files={"file": (name, data)})
        assert resp.status_code == 200, resp.text


def test_unknown_model_and_bad_threshold(client: TestClient) -> None:
    assert_problem(client.post("/detect", files={"file": ("a.png", png())}, data={"model": "gpt-9"}), 404, "'gpt-9'")
    resp = client.post("/detect", files={"file": ("a.png", png())}, data={"threshold": "1.5"})
    assert_problem(resp, 422, "threshold")
    assert "1.5" in resp.json()["detail"]


def test_missing_file_field_and_unknown_route(client: TestClient) -> None:
    assert_problem(client.post("/detect", data={"threshold": "0.5"}), 422, "file")
    assert_problem(client.get("/nope"), 404, "not found")


def test_upload_byte_limit_is_413(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, max_upload_bytes=2048) as c:
        big = files.encode(files.gradient_rgb(200, 200), "BMP")
        assert_problem(c.post("/detect", files={"file": ("big.bmp", big)}), 413, "2048 bytes")


def test_models_health_and_readiness(client: TestClient, redis_url: str) -> None:
    models = client.get("/models").json()
    assert models["default"] == "tiny-vgg"
    assert {m["name"] for m in models["models"]} == {"tiny-vgg", "tiny-resnet"}
    assert all(len(m["sha256"]) == 64 and m["fake_index"] == 0 for m in models["models"])
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.head("/healthz").status_code == 200
    assert_problem(client.get("/readyz"), 503, "no live worker")  # no worker has started: jobs would wait
    with Presence(Redis.from_url(redis_url), "w-1", 5, ("deepfake-guard", "deepfake-guard-slow")):
        assert client.head("/readyz").status_code == 200
        ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["redis"] == "ok" and ready["workers"] == 1
    assert client.get("/openapi.json").status_code == 200


def test_readiness_without_redis_is_503(tiny_checkpoints: Path) -> None:
    with make_client(tiny_checkpoints, None) as c:
        assert_problem(c.get("/readyz"), 503, "Redis")
        assert_problem(c.post("/purify", files={"file": ("a.png", png())}), 503, "Redis")


# ---- jobs API (no worker here: jobs stay queued) ----


def test_purify_queues_a_job_with_location(client: TestClient) -> None:
    resp = client.post("/purify", files={"file": ("a.png", png())}, data={"method": "dip", "max_iterations": "50"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"/jobs/{job_id}"
    info = client.get(f"/jobs/{job_id}").json()
    assert info["status"] == "queued" and info["kind"] == "purify"
    assert info["params"] == {"method": "dip", "max_iterations": 50, "preset": "default", "seed": 0}
    assert info["result"] is None and info["expires_at"] is None
    assert_problem(client.get(f"/jobs/{job_id}/result"), 409, "queued")


def test_purify_rejects_bad_parameters(client: TestClient) -> None:
    f = {"file": ("a.png", png())}
    assert_problem(client.post("/purify", files=f, data={"method": "blur"}), 422, "method")
    assert_problem(client.post("/purify", files=f, data={"method": "jpeg", "bits": "3"}), 422, "['bits']")
    assert_problem(client.post("/purify", files=f, data={"method": "median", "kernel_size": "4"}), 422, "odd")
    assert_problem(client.post("/purify", files=f, data={"max_iterations": "0"}), 422, "max_iterations")
    assert_problem(client.post("/purify", files=f, data={"max_iterations": "999999"}), 422, "limit")
    assert_problem(client.post("/purify", files={"file": ("x.txt", b"text")}), 422, "not a recognisable image")


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    f = {"file": ("a.png", png())}
    first = client.post("/purify", files=f, data={"method": "jpeg"}, headers={"Idempotency-Key": "abc"})
    again = client.post("/purify", files=f, data={"method": "jpeg"}, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/purify", files=f, data={"method": "median"}, headers={"Idempotency-Key": "abc"})
    assert_problem(other, 409, "different request")


def test_backpressure_answers_503_with_retry_after(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, max_queue_depth=2, retry_after_s=7) as c:
        for _ in range(2):
            assert c.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}).status_code == 202
        resp = c.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"})
        assert_problem(resp, 503, "2 jobs are queued")
        assert resp.headers["retry-after"] == "7"


def test_unknown_job_is_404_and_delete_cancels_a_queued_job(client: TestClient, redis_url: str) -> None:
    assert_problem(client.get("/jobs/doesnotexist"), 404, "'doesnotexist'")
    job_id = client.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}).json()["id"]
    resp = client.delete(f"/jobs/{job_id}")
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    info = client.get(f"/jobs/{job_id}").json()
    assert info["status"] == "canceled" and "canceled" in info["error"]
    assert Redis.from_url(redis_url).llen("rq:queue:deepfake-guard") == 0


def test_images_with_a_side_under_the_minimum_are_refused(client: TestClient) -> None:
    for w, h in [(1, 1), (4000, 1), (15, 300)]:
        data = files.encode(files.gradient_rgb(w, h), "PNG")
        resp = client.post("/detect", files={"file": ("thin.png", data)})
        assert_problem(resp, 422, f"{w} x {h} pixels; each side must be at least 16")
        assert "thin.png" in resp.json()["detail"]
    edge = files.encode(files.gradient_rgb(16, 16), "PNG")
    assert client.post("/detect", files={"file": ("edge.png", edge)}).status_code == 200


def test_detect_pixel_budget_covers_the_whole_request(client: TestClient) -> None:
    # max_pixels is 1,000,000 in this fixture: one 800 x 800 image fits, two do not (before any is scored).
    big = files.encode(files.gradient_rgb(800, 800), "PNG")
    assert client.post("/detect", files={"file": ("one.png", big)}).status_code == 200
    resp = client.post("/detect", files=[("file", ("one.png", big)), ("file", ("two.png", big))])
    assert_problem(resp, 413, "two.png")
    assert "1000000 pixels in all" in resp.json()["detail"] and "hold 640000" in resp.json()["detail"]
    small = [("file", (f"{i}.png", png())) for i in range(3)]  # 3 x 1,200 pixels: well inside
    assert client.post("/detect", files=small).status_code == 200


@pytest.mark.parametrize("job_id", ["a.b", "a b", "*", "\u2713", "x" * 65])
def test_job_ids_outside_the_alphabet_are_404_not_500(client: TestClient, job_id: str) -> None:
    for resp in (client.get(f"/jobs/{job_id}"), client.get(f"/jobs/{job_id}/result"), client.delete(f"/jobs/{job_id}")):
        assert_problem(resp, 404, "letters, digits")


def test_an_execution_suffix_does_not_reach_the_job(client: TestClient) -> None:
    job_id = client.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}).json()["id"]
    assert_problem(client.get(f"/jobs/{job_id}:x"), 404, "letters, digits")
    assert client.get(f"/jobs/{job_id}").status_code == 200


def test_idempotency_key_must_not_be_empty_and_a_conflict_hides_the_other_job(client: TestClient) -> None:
    f = {"file": ("a.png", png())}
    for key in ("", "   "):
        resp = client.post("/purify", files=f, data={"method": "jpeg"}, headers={"Idempotency-Key": key})
        assert_problem(resp, 422, "Idempotency-Key is empty")
    first = client.post("/purify", files=f, data={"method": "jpeg"}, headers={"Idempotency-Key": "k-1"})
    other = client.post("/purify", files=f, data={"method": "bitdepth"}, headers={"Idempotency-Key": "k-1"})
    assert_problem(other, 409, "different request")
    assert first.json()["id"] not in other.text


def test_purify_takes_one_file_and_refuses_parameters_of_other_methods(client: TestClient) -> None:
    two = [("file", ("a.png", png())), ("file", ("b.png", png()))]
    assert_problem(client.post("/purify", files=two, data={"method": "jpeg"}), 422, "2 files sent")
    f = {"file": ("a.png", png())}
    assert_problem(client.post("/purify", files=f, data={"method": "jpeg", "preset": "paper"}), 422, "['preset']")
    assert_problem(client.post("/purify", files=f, data={"method": "median", "seed": "3"}), 422, "['seed']")
    # a parameter of another method is named as such, not judged by that method's rules
    assert_problem(client.post("/purify", files=f, data={"method": "jpeg", "kernel_size": "4"}), 422, "['kernel_size']")
    resp = client.post("/purify", files=f, data={"method": "dip", "bits": "3"})
    assert_problem(resp, 422, "['max_iterations', 'preset', 'seed', 'stop']")


def test_result_of_a_job_that_ended_without_an_image_says_so(client: TestClient) -> None:
    job_id = client.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}).json()["id"]
    assert client.delete(f"/jobs/{job_id}").json()["status"] == "canceled"
    assert_problem(client.get(f"/jobs/{job_id}/result"), 409, "ended without an image")


def test_openapi_documents_errors_as_problem_json(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    errors = [
        (path, method, status, set(body.get("content", {})))
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for status, body in op["responses"].items()
        if status.startswith(("4", "5"))
    ]
    assert len(errors) >= 20
    assert all(types == {PROBLEM} for *_, types in errors), [e for e in errors if e[3] != {PROBLEM}]
    documented = {(path, status) for path, _, status, _ in errors}
    assert {("/detect", "413"), ("/purify", "409"), ("/attack", "422"), ("/jobs/{job_id}", "404")} <= documented


def test_openapi_documents_form_fields_a_multipart_body_can_carry(client: TestClient) -> None:
    """A multipart body has no null: an optional field is left out, so no form field is documented as nullable
    (schemathesis sent the text "null" for them); /detect needs at least one file."""
    spec = client.get("/openapi.json").json()
    bodies = [
        op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
        for ops in spec["paths"].values()
        for op in ops.values()
        if "multipart/form-data" in op.get("requestBody", {}).get("content", {})
    ]
    assert len(bodies) == 4  # /detect, /attack, /purify, /audits
    nullable = [
        (body, name)
        for body in bodies
        for name, prop in spec["components"]["schemas"][body]["properties"].items()
        if {"type": "null"} in prop.get("anyOf", []) or prop.get("type") == "null"
    ]
    assert nullable == []
    detect = next(b for b in bodies if "detect" in b)
    assert spec["components"]["schemas"][detect]["properties"]["file"]["minItems"] == 1


def test_a_wrong_method_is_405_naming_every_method_of_the_path(client: TestClient) -> None:
    done = client.options("/jobs/some-id")
    assert done.status_code == 405 and done.headers["content-type"] == PROBLEM
    assert done.headers["allow"] == "DELETE, GET"  # two routes share the path: both are named
    assert client.put("/detect").headers["allow"] == "POST"


def test_concurrent_identical_requests_with_one_key_make_one_job(
    tiny_checkpoints: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is claimed before its job exists; a slow enqueue widens that gap so the others land in it."""
    import threading

    from rq import Queue

    from app import jobs
    from core import keys

    slow_enqueue = Queue.enqueue

    def enqueue_slowly(self: Queue, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return slow_enqueue(self, *args, **kwargs)

    monkeypatch.setattr(Queue, "enqueue", enqueue_slowly)
    settings = Settings(checkpoints_dir=tiny_checkpoints, redis_url=redis_url, device="cpu")  # type: ignore[arg-type]
    conn = Redis.from_url(redis_url)
    outcomes: list[tuple[str, bool] | str] = []

    def submit() -> None:
        try:
            job, created = jobs.enqueue(
                conn, settings, func=keys.PURIFY_FUNC, kind="purify", image=png(), params={"method": "jpeg"},
                idempotency_key="same-key",
            )  # fmt: skip
            outcomes.append((job.id, created))
        except Exception as exc:  # a false 409 or anything else is a failure of this test
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert len({o[0] for o in outcomes}) == 1 and sum(o[1] for o in outcomes) == 1, outcomes  # type: ignore[index]
    assert conn.llen("rq:queue:deepfake-guard") == 1


def test_nan_threshold_and_an_empty_key_on_a_synchronous_attack_are_refused(client: TestClient) -> None:
    resp = client.post("/detect", files={"file": ("a.png", png())}, data={"threshold": "nan"})
    assert_problem(resp, 422, "finite number")
    resp = client.post(
        "/attack", files={"file": ("a.png", png())}, data={"method": "fgsm"}, headers={"Idempotency-Key": ""}
    )
    assert_problem(resp, 422, "Idempotency-Key is empty")


def test_unknown_and_repeated_form_fields_are_refused(client: TestClient) -> None:
    f = {"file": ("a.png", png())}
    resp = client.post("/purify", files=f, data={"method": "median", "kernelsize": "5"})
    assert_problem(resp, 422, "unknown form field(s) ['kernelsize']")
    assert_problem(client.post("/detect", files=f, data={"treshold": "0.3"}), 422, "['treshold']")
    assert_problem(client.post("/attack", files=f, data={"method": "fgsm", "bogus": "1"}), 422, "['bogus']")
    twice = [("file", ("a.png", png())), ("method", (None, "jpeg")), ("method", (None, "median"))]
    assert_problem(client.post("/purify", files=twice), 422, "'method' was sent 2 times")
    two_images = [("file", ("a.png", png())), ("file", ("b.png", png()))]
    assert client.post("/detect", files=two_images).status_code == 200  # /detect takes several


def test_the_form_field_lists_match_the_routes(client: TestClient) -> None:
    from app.routes.attack import attack_fields
    from app.routes.audits import audit_fields
    from app.routes.detect import DETECT_FIELDS
    from app.routes.purify import purify_fields

    ATTACK_FIELDS, PURIFY_FIELDS = attack_fields(), purify_fields()

    spec = client.get("/openapi.json").json()
    routes = (
        ("/detect", DETECT_FIELDS),
        ("/purify", PURIFY_FIELDS),
        ("/attack", ATTACK_FIELDS),
        ("/audits", audit_fields()),
    )
    for path, fields in routes:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        declared = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
        assert set(declared) == set(fields), path
