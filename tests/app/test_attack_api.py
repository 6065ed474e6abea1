"""POST /attack in-process (real lifespan, real Redis, tiny random detectors)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from core.settings import Settings
from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client

BUDGETS = {"cw_sync_max_steps": 200, "pgd_sync_max_steps": 40}


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url, **BUDGETS) as c:
        yield c


def work_off_queue(client: TestClient) -> None:
    """Run the queued jobs in this process with the service's own worker class, until the queue is empty."""
    from models.zoo import Zoo
    from workers.worker import build_worker

    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.redis_url is not None
    with Redis.from_url(settings.redis_url) as conn:
        zoo = Zoo.from_directory(settings.checkpoints_dir, torch.device("cpu"))
        build_worker(settings, conn, zoo).work(burst=True, with_scheduler=False)


def finished_job(client: TestClient, resp: Any) -> dict[str, Any]:
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"/jobs/{job_id}"
    work_off_queue(client)
    info = client.get(f"/jobs/{job_id}").json()
    assert info["status"] == "finished", info
    return dict(info)


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


def labels(client: TestClient, png: bytes, model: str = "tiny-vgg") -> str:
    body = client.post("/detect", files={"file": ("x", png)}, data={"model": model}).json()
    return str(body["results"][0]["label"])


@pytest.mark.parametrize(
    "data",
    [
        {"method": "fgsm", "eps": "0.05"},
        {"method": "pgd", "eps": "0.05", "steps": "5", "step_size": "0.01"},
        {"method": "cw_l2", "search_steps": "2", "max_iterations": "30"},
    ],
)
def test_targeted_runs_and_reports_the_other_class_honestly(client: TestClient, data: dict[str, str]) -> None:
    resp = client.post("/attack", files={"file": ("g.png", image())}, data={**data, "targeted": "true"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    after = labels(client, base64.b64decode(body["adversarial"]))
    assert body["label_after"] == after
    assert body["success"] == (after != labels(client, image()))  # two classes: the other one, or not


@pytest.mark.parametrize(
    "data",
    [
        {"method": "pgd", "eps": "0.3", "steps": "30", "step_size": "0.02"},
        {"method": "cw_l2", "kappa": "0", "search_steps": "5", "max_iterations": "30"},
    ],
)
def test_targeted_attack_moves_the_label_to_the_other_class(client: TestClient, data: dict[str, str]) -> None:
    # tiny-resnet responds to its input (the random tiny-vgg is nearly constant): the flip is reachable.
    data = {**data, "targeted": "true", "target": "tiny-resnet"}
    body = client.post("/attack", files={"file": ("g.png", image())}, data=data).json()
    assert body["success"] is True, body
    clean, adv = (
        labels(client, image(), "tiny-resnet"),
        labels(client, base64.b64decode(body["adversarial"]), "tiny-resnet"),
    )
    assert (body["label_before"], body["label_after"]) == (clean, adv) and adv != clean


def test_queued_targeted_cw_finishes(client: TestClient) -> None:
    data = {"method": "cw_l2", "search_steps": "1", "max_iterations": "201", "targeted": "true"}
    info = finished_job(client, client.post("/attack", files={"file": ("g.png", image())}, data=data))
    assert info["params"]["targeted"] is True and info["attempts"] == 1
    result = info["result"]
    assert result["success"] == (result["label_after"] != result["label_before"])


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"c": "1e308"}, "c: input should be less than or equal to 10000000000"),
        ({"c_max": "1e308"}, "c_max: input should be less than or equal to 10000000000"),
        ({"kappa": "1e308"}, "kappa: input should be less than or equal to 1000000"),
        ({"kappa": "inf"}, "kappa: input should be a finite number"),
        ({"c": "inf"}, "c: input should be a finite number"),
        ({"c": "100", "c_max": "10"}, "c_max must be at least c (100.0), got 10.0"),
        ({"preset": "paper", "c_max": "10"}, "c_max must be at least c (100.0), got 10.0"),
        ({"lr": "nan"}, "lr: input should be a finite number"),
        # over the synchronous budget too: refused at once, never queued to fail later
        ({"c": "1e308", "max_iterations": "1001", "search_steps": "1"}, "c: input should be less than"),
        ({"c": "100", "c_max": "10", "max_iterations": "1001", "search_steps": "1"}, "c_max must be at least c "),
    ],
)
def test_cw_constants_are_bounded_and_named_as_the_form_names_them(
    client: TestClient, data: dict[str, str], needle: str
) -> None:
    resp = client.post("/attack", files={"file": ("g.png", image())}, data={"method": "cw_l2", **data})
    assert_problem(resp, 422, needle)
    assert "c_init" not in resp.json()["detail"]
    assert client.get("/readyz").status_code != 500


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"method": "fgsm", "eps": "nan"}, "eps: input should be a finite number (got 'nan')"),
        ({"method": "fgsm", "eps": "-inf"}, "eps: input should be a finite number"),
        ({"method": "pgd", "step_size": "inf"}, "step_size: input should be a finite number"),
        ({"method": "fgsm", "c": "1"}, "parameters ['c'] do not apply to method='fgsm'"),
        ({"method": "pgd", "c": "1", "kappa": "2"}, "parameters ['c', 'kappa']"),
    ],
)
def test_messages_name_form_fields_and_finiteness(client: TestClient, data: dict[str, str], needle: str) -> None:
    assert_problem(client.post("/attack", files={"file": ("g.png", image())}, data=data), 422, needle)


def test_pgd_within_its_budget_stays_synchronous(client: TestClient) -> None:
    for steps in (None, "40"):
        data = {"method": "pgd"} if steps is None else {"method": "pgd", "steps": steps}
        resp = client.post("/attack", files={"file": ("g.png", image())}, data=data)
        assert resp.status_code == 200, resp.text
        assert resp.json()["iterations"] == int(steps or 10)


def test_pgd_above_its_budget_becomes_a_job_that_finishes(client: TestClient) -> None:
    data = {"method": "pgd", "steps": "41", "eps": "0.03", "step_size": "0.01", "target": "tiny-vgg"}
    info = finished_job(client, client.post("/attack", files={"file": ("g.png", image())}, data=data))
    assert info["kind"] == "attack" and info["params"]["steps"] == 41
    result = info["result"]
    assert result["iterations"] == 41 and result["linf"] <= 0.03 + 1 / 255
    assert info["progress"]["iteration"] == 41 and info["progress"]["max_iterations"] == 41
    assert info["progress"]["fraction"] == 1.0 and info["progress"]["stage"] == "pgd done"
    adv = client.get(info["result_url"]).content
    check = client.post("/detect", files={"file": ("adv", adv)}, data={"model": "tiny-vgg"}).json()["results"][0]
    assert check["p_fake"] == pytest.approx(result["p_fake_after"], abs=1e-4)


def test_finished_cw_job_progress_ends_at_the_iterations_it_ran(client: TestClient) -> None:
    data = {"method": "cw_l2", "search_steps": "1", "max_iterations": "1001", "target": "tiny-vgg"}
    info = finished_job(client, client.post("/attack", files={"file": ("g.png", image())}, data=data))
    ran = info["result"]["iterations"]
    progress = info["progress"]
    assert progress["iteration"] == ran and progress["max_iterations"] == 1001, (progress, ran)
    assert progress["fraction"] == 1.0 and progress["eta_s"] == 0.0
    assert progress["stage"] == ("cw_l2 done" if ran == 1001 else "cw_l2 done (stopped early)")


def test_a_large_image_counts_as_more_steps(client: TestClient) -> None:
    """Attacks work at the upload's resolution: the step budget (40 here) is counted at 512 x 512 pixels."""
    at_reference = files.encode(files.gradient_rgb(512, 512), "PNG")
    resp = client.post("/attack", files={"file": ("r.png", at_reference)}, data={"method": "pgd", "steps": "40"})
    assert resp.status_code == 200, resp.text  # 40 steps at the reference size: within the budget
    big = files.encode(files.gradient_rgb(1024, 1024), "PNG")  # 4 x the pixels
    resp = client.post("/attack", files={"file": ("big.png", big)}, data={"method": "pgd", "steps": "11"})
    info = finished_job(client, resp)  # 11 steps count as 44 > 40: queued, and the job runs them
    assert info["result"]["iterations"] == 11
    assert Image.open(io.BytesIO(client.get(info["result_url"]).content)).size == (1024, 1024)
    # FGSM is one step: queued only when its image is over 40 x the reference size (not here)
    assert client.post("/attack", files={"file": ("big.png", big)}, data={"method": "fgsm"}).status_code == 200


@pytest.mark.parametrize(
    "data", [{"method": "fgsm"}, {"method": "cw_l2", "max_iterations": "5", "save_format": "jpeg75"}]
)
def test_a_synchronous_answer_is_what_its_openapi_schema_says(client: TestClient, data: dict[str, str]) -> None:
    from app.schemas import AttackResult

    body = client.post("/attack", files={"file": ("g.png", image())}, data=data).json()
    parsed = AttackResult.model_validate(body)
    assert set(body) == set(AttackResult.model_fields), set(body) ^ set(AttackResult.model_fields)
    assert parsed.adversarial_media_type == ("image/jpeg" if data.get("save_format") else "image/png")
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/attack"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/AttackResult"}


def test_the_same_request_gives_the_same_answer_whatever_ran_before(client: TestClient) -> None:
    """The attack's random draws (CW's initial noise, PGD's start) come from a seeded generator, not the process's
    global one: a test that had drawn from it before once turned a targeted CW success into a failure."""
    data = {"method": "cw_l2", "kappa": "0", "search_steps": "2", "max_iterations": "10", "target": "tiny-resnet"}
    first = client.post("/attack", files={"file": ("g.png", image())}, data=data).json()
    torch.rand(1000)  # what any other code in the process might draw
    second = client.post("/attack", files={"file": ("g.png", image())}, data=data).json()
    assert first["adversarial"] == second["adversarial"] and first["l2"] == second["l2"]
