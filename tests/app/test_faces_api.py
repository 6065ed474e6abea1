"""crop=faces on /detect, /attack and /purify, in-process (real lifespan, real Redis, the service's own worker class)
on the sample photos that scikit-image and matplotlib ship (docs/FACES.md)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib import cbook
from PIL import Image
from skimage import data

from core.jobs import AttackJob, PurifyJob
from tests.app.test_api import assert_problem, make_client
from tests.app.test_attack_api import finished_job

#: The tiny random VGG answers ~0.515 whatever the image; the tiny ResNet's answer depends on it.
MODEL = "tiny-resnet"
# Hand-checked face centres (x, y) in the photos' own pixels (tests/models/test_faces.py).
FACE_CENTRES = {"astronaut": (222, 125), "grace_hopper": (270, 240)}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "PNG")
    return buf.getvalue()


def _pixels(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.array(Image.open(f).convert("RGB"))
    astronaut = data.astronaut()
    right = np.asarray(Image.fromarray(hopper).resize((512, 600), Image.Resampling.LANCZOS))[:512]
    return {
        "astronaut": _png(astronaut),
        "grace_hopper": _png(hopper),
        "coffee": _png(data.coffee()),
        "chelsea": _png(data.chelsea()),
        "collage": _png(np.concatenate([astronaut, right], axis=1)),
    }


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url, pgd_sync_max_steps=40) as c:
        yield c


def _inside(box: list[int], point: tuple[int, int]) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def _changed_only_inside(before: bytes, after: bytes, boxes: list[list[int]]) -> int:
    """How many pixels changed; asserts none of them lies outside every box."""
    changed = np.abs(_pixels(before) - _pixels(after)).sum(axis=2) > 0
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    assert not (changed & ~inside).any(), np.argwhere(changed & ~inside)[:5]
    return int(changed.sum())


def test_detect_faces_boxes_faces_and_says_no_face_elsewhere(client: TestClient, photos: dict[str, bytes]) -> None:
    names = ["astronaut", "grace_hopper", "coffee", "chelsea", "collage"]
    resp = client.post(
        "/detect", files=[("file", (f"{n}.png", photos[n])) for n in names], data={"crop": "faces", "model": MODEL}
    )
    assert resp.status_code == 200, resp.text
    results = {r["filename"]: r for r in resp.json()["results"]}
    for name, centre in FACE_CENTRES.items():
        r = results[f"{name}.png"]
        assert len(r["faces"]) == 1 and _inside(r["faces"][0]["box"], centre), r
        assert r["p_fake"] == r["faces"][0]["p_fake"] and r["label"] == r["faces"][0]["label"]
    for name in ("coffee", "chelsea"):
        r = results[f"{name}.png"]
        assert (r["faces"], r["p_fake"], r["label"]) == ([], None, "no_face"), r
    collage = results["collage.png"]
    assert len(collage["faces"]) == 2, collage
    assert collage["p_fake"] == max(f["p_fake"] for f in collage["faces"])
    assert any(_inside(f["box"], (762, 240)) for f in collage["faces"])  # grace_hopper's face, 512 px to the right


def test_a_face_is_scored_on_its_crop_not_on_the_whole_photo(client: TestClient, photos: dict[str, bytes]) -> None:
    whole = client.post("/detect", files={"file": ("a.png", photos["astronaut"])}, data={"model": MODEL}).json()[
        "results"
    ][0]
    faces = client.post(
        "/detect", files={"file": ("a.png", photos["astronaut"])}, data={"crop": "faces", "model": MODEL}
    ).json()
    (face,) = faces["results"][0]["faces"]
    x0, y0, x1, y1 = face["box"]
    cut = _png(np.asarray(Image.open(io.BytesIO(photos["astronaut"])).convert("RGB"))[y0:y1, x0:x1])
    alone = client.post("/detect", files={"file": ("face.png", cut)}, data={"model": MODEL}).json()["results"][0]
    # The crop, sent as an image of its own, scores as the face does: crop=faces resizes the same pixels.
    assert face["p_fake"] == pytest.approx(alone["p_fake"], abs=1e-5)
    assert whole["faces"] is None and abs(whole["p_fake"] - face["p_fake"]) > 1e-6


@pytest.mark.parametrize(
    "data",
    [{"method": "fgsm", "eps": "0.05"}, {"method": "pgd", "eps": "0.03", "steps": "3", "step_size": "0.01"}],
)
def test_attack_on_faces_changes_only_face_pixels_and_agrees_with_detect(
    client: TestClient, photos: dict[str, bytes], data: dict[str, str]
) -> None:
    resp = client.post(
        "/attack", files={"file": ("c.png", photos["collage"])}, data={**data, "crop": "faces", "target": MODEL}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["crop"] == "faces" and len(body["faces_before"]) == 2
    adv = base64.b64decode(body["adversarial"])
    assert _changed_only_inside(photos["collage"], adv, [f["box"] for f in body["faces_before"]]) > 1000
    again = client.post("/detect", files={"file": ("adv.png", adv)}, data={"crop": "faces", "model": MODEL}).json()[
        "results"
    ][0]
    assert body["p_fake_after"] == pytest.approx(again["p_fake"], abs=1e-4)
    assert body["label_after"] == again["label"]
    assert [f["box"] for f in body["faces"]] == [f["box"] for f in again["faces"]]
    assert body["success"] == (body["label_after"] != body["label_before"])


def test_a_queued_attack_on_faces_uses_the_uploads_boxes(client: TestClient, photos: dict[str, bytes]) -> None:
    data = {"method": "pgd", "eps": "0.03", "steps": "50", "step_size": "0.01", "crop": "faces", "target": MODEL}
    resp = client.post("/attack", files={"file": ("a.png", photos["astronaut"])}, data=data)
    info = finished_job(client, resp)
    assert info["params"]["crop"] == "faces" and len(info["params"]["faces"]) == 1
    assert info["result"]["faces_before"][0]["box"] == info["params"]["faces"][0]
    adv = client.get(info["result_url"]).content
    _changed_only_inside(photos["astronaut"], adv, info["params"]["faces"])


def test_purify_faces_pastes_purified_faces_back(client: TestClient, photos: dict[str, bytes]) -> None:
    resp = client.post(
        "/purify", files={"file": ("a.png", photos["grace_hopper"])}, data={"method": "median", "crop": "faces"}
    )
    info = finished_job(client, resp)
    result = info["result"]
    (face,) = result["faces"]
    assert _inside(face["box"], FACE_CENTRES["grace_hopper"]) and result["crop"] == "faces"
    out = client.get(info["result_url"]).content
    assert _changed_only_inside(photos["grace_hopper"], out, [face["box"]]) > 1000
    for scores in result["detectors"].values():
        assert scores["label_before"] in ("fake", "real") and len(scores["faces_after"]) == len(result["faces_after"])


@pytest.mark.parametrize(("path", "data"), [("/attack", {"method": "fgsm"}), ("/purify", {"method": "median"})])
def test_attack_and_purify_refuse_a_photo_without_a_face(
    client: TestClient, photos: dict[str, bytes], path: str, data: dict[str, str]
) -> None:
    resp = client.post(path, files={"file": ("coffee.png", photos["coffee"])}, data={**data, "crop": "faces"})
    assert_problem(resp, 422, "no face was found in coffee.png")


def test_crop_takes_only_its_values(client: TestClient, photos: dict[str, bytes]) -> None:
    resp = client.post("/detect", files={"file": ("a.png", photos["astronaut"])}, data={"crop": "heads"})
    assert_problem(resp, 422, "crop")


def test_jobs_queued_without_crop_read_as_before() -> None:
    old: dict[str, Any] = {"method": "fgsm", "target": "a", "source": "a", "save_format": "png", "eps": 0.1}
    job = AttackJob.from_json(old)
    assert (job.crop, job.faces, job.params) == ("none", (), {"eps": 0.1}) and job.to_json() == old
    faces = AttackJob(method="fgsm", target="a", source="a", save_format="png", crop="faces", faces=((1, 2, 3, 4),))
    assert AttackJob.from_json(faces.to_json()) == faces
    purify = PurifyJob(method="median", params={"kernel_size": 3}, crop="faces", faces=((0, 0, 8, 8),))
    assert PurifyJob.from_json(purify.to_json()) == purify
    assert PurifyJob.from_json({"method": "median", "kernel_size": 3}).batch_signature() != purify.batch_signature()
