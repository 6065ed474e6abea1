"""POST /attack in-process (real lifespan, real Redis, tiny random detectors)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url, cw_sync_max_steps=200) as c:
        yield c


def image() -> bytes:
    return files.encode(files.gradient_rgb(48, 40), "PNG")


@pytest.mark.parametrize(
    ("data", "save_format"),
    [
        ({"method": "fgsm", "eps": "0.05"}, "png"),
        ({"method": "pgd", "eps": "0.03", "steps": "5", "step_size": "0.01"}, "png"),
        ({"method": "fgsm", "eps": "0.05"}, "jpeg75"),
        ({"method": "cw_l2", "search_steps": "2", "max_iterations": "30", "lr": "0.05"}, "png"),
    ],
)
def test_attack_result_is_consistent_with_detect(client: TestClient, data: dict[str, str], save_format: str) -> None:
    resp = client.post(
        "/attack", files={"file": ("g.png", image())}, data={**data, "target": "tiny-vgg", "save_format": save_format}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    for key in (
        "p_fake_before",
        "p_fake_after",
        "l2",
        "linf",
        "psnr",
        "iterations",
        "success",
        "adversarial",
        "perturbation",
    ):
        assert key in body, key
    assert body["target"]["name"] == "tiny-vgg" and body["source"]["name"] == "tiny-vgg"
    if data["method"] != "cw_l2":
        assert body["linf"] <= float(data["eps"]) + 1 / 255 + (0.1 if save_format == "jpeg75" else 0)
    adv = base64.b64decode(body["adversarial"])
    check = client.post("/detect", files={"file": ("adv", adv)}, data={"model": "tiny-vgg"}).json()["results"][0]
    assert check["width"] == 48 and check["height"] == 40
    assert check["p_fake"] == pytest.approx(body["p_fake_after"], abs=1e-4)
    before = client.post("/detect", files={"file": ("g.png", image())}, data={"model": "tiny-vgg"}).json()["results"][0]
    assert before["p_fake"] == pytest.approx(body["p_fake_before"], abs=1e-4)
    assert body["success"] == (check["label"] != before["label"])


def test_black_box_transfer_reports_source_and_target(client: TestClient) -> None:
    data = {"method": "fgsm", "eps": "0.03", "target": "tiny-vgg", "source": "tiny-resnet"}
    body = client.post("/attack", files={"file": ("g.png", image())}, data=data).json()
    assert body["target"]["name"] == "tiny-vgg" and body["source"]["name"] == "tiny-resnet"
    assert body["source_p_fake_before"] is not None


def test_attack_parameter_errors_are_422_or_404(client: TestClient) -> None:
    f = {"file": ("g.png", image())}
    assert_problem(client.post("/attack", files=f, data={"method": "fgsm", "eps": "0"}), 422, "eps")
    assert_problem(client.post("/attack", files=f, data={"method": "fgsm", "eps": "1.5"}), 422, "eps")
    assert_problem(client.post("/attack", files=f, data={"method": "pgd", "kappa": "3"}), 422, "['kappa']")
    assert_problem(client.post("/attack", files=f, data={"method": "deepfool"}), 422, "method")
    assert_problem(client.post("/attack", files=f, data={"method": "cw_l2", "preset": "fast"}), 422, "preset")
    assert_problem(client.post("/attack", files=f, data={"target": "nope"}), 404, "'nope'")
    assert_problem(client.post("/attack", files={"file": ("t.txt", b"text")}), 422, "not a recognisable image")


def test_large_cw_budget_becomes_a_job(client: TestClient) -> None:
    resp = client.post("/attack", files={"file": ("g.png", image())}, data={"method": "cw_l2", "preset": "paper"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"/jobs/{job_id}"
    info = client.get(f"/jobs/{job_id}").json()
    assert info["kind"] == "attack" and info["status"] == "queued"
    assert info["params"]["method"] == "cw_l2" and info["params"]["preset"] == "paper"
