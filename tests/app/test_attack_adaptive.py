"""POST /attack with a defence (adaptive attacks), and the CLI's --defense: derived fields, sync vs queued, 422s."""

from __future__ import annotations

import csv
from pathlib import Path

from fastapi.testclient import TestClient

from deepfake_guard.cli import main
from tests.app.test_api import assert_problem
from tests.app.test_attack_api import client as client  # the fixture
from tests.app.test_attack_api import finished_job, image


def test_defense_fields_are_derived_and_prefixed(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ref = spec["paths"]["/attack"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    assert {"none", "jpeg", "dip"} <= set(form["defense"]["enum"])
    for name in ("defense_quality", "defense_bits", "defense_max_iterations", "eot_samples", "resubmissions"):
        assert name in form, name
    assert "max_iterations" in form  # CW-L2's own, apart from the defence's


def test_an_adaptive_attack_through_a_cheap_purifier_runs_synchronously(client: TestClient) -> None:
    f = {"file": ("g.png", image())}
    data = {"method": "pgd", "eps": "0.03", "steps": "3", "defense": "bitdepth", "defense_bits": "4"}
    resp = client.post("/attack", files=f, data=data)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    d = body["defense"]
    assert d["purifier"] == "bitdepth" and d["params"] == {"bits": 4} and d["resubmissions"] == 1
    assert len(d["p_fake_after"]) == 1 and body["success"] == d["success_any"]
    plain = client.post("/attack", files=f, data={"method": "pgd", "eps": "0.03", "steps": "3"}).json()
    assert plain["defense"] is None
    jpeg = client.post("/attack", files=f, data={"method": "pgd", "eps": "0.03", "steps": "3", "defense": "jpeg"})
    assert jpeg.status_code == 200, jpeg.text  # through the differentiable JPEG's gradient (docs/ATTACKS.md)
    assert jpeg.json()["defense"]["bpda"] == "approx" and jpeg.json()["defense"]["params"] == {"quality": 75}


def test_an_adaptive_attack_through_dip_is_queued_with_progress(client: TestClient) -> None:
    f = {"file": ("g.png", image())}
    data = {
        "method": "pgd", "eps": "0.03", "steps": "2", "defense": "dip", "defense_preset": "early",
        "defense_max_iterations": "4", "bpda_iterations": "2", "eot_samples": "2", "resubmissions": "2",
    }  # fmt: skip
    info = finished_job(client, client.post("/attack", files=f, data=data))
    d = info["result"]["defense"]
    assert d["purifier"] == "dip" and d["eot_samples"] == 2 and d["resubmissions"] == 2
    assert d["attack_params"]["max_iterations"] == 2 and d["params"]["max_iterations"] == 4
    assert len(d["p_fake_after"]) == 2
    assert info["progress"]["fraction"] == 1.0


def test_bad_defence_requests_are_422_naming_the_field(client: TestClient) -> None:
    f = {"file": ("g.png", image())}
    base = {"method": "pgd", "eps": "0.03", "steps": "2"}
    assert_problem(client.post("/attack", files=f, data={**base, "defense_bits": "4"}), 422, "defense_bits")
    assert_problem(client.post("/attack", files=f, data={**base, "eot_samples": "2"}), 422, "eot_samples")
    bad = {**base, "defense": "jpeg", "defense_bits": "4"}
    assert_problem(client.post("/attack", files=f, data=bad), 422, "defense_bits")
    bad = {**base, "defense": "jpeg", "defense_quality": "500"}
    assert_problem(client.post("/attack", files=f, data=bad), 422, "defense_quality")
    assert_problem(client.post("/attack", files=f, data={**base, "defense": "blur"}), 422, "defense")
    bad = {**base, "defense": "dip", "resubmissions": "0"}
    assert_problem(client.post("/attack", files=f, data=bad), 422, "resubmissions")
    for setting in ("eot_samples", "resubmissions", "bpda_iterations"):  # a deterministic purifier cannot use them
        bad = {**base, "defense": "jpeg", setting: "2"}
        assert_problem(client.post("/attack", files=f, data=bad), 422, f"{setting} applies only to")
    # refused before the upload is searched for faces (this image has none: that would be another 422)
    bad = {**base, "defense": "jpeg", "crop": "faces"}
    assert_problem(client.post("/attack", files=f, data=bad), 422, "an adaptive attack (defense) needs crop=none")


def test_the_cli_attacks_through_a_defense(tmp_path: Path, tiny_checkpoints: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(image())
    argv = ["attack", str(src), "-o", str(tmp_path / "adv"), "--target", "tiny-vgg", "--checkpoints"]
    argv += [str(tiny_checkpoints), "--device", "cpu", "--method", "pgd", "--eps", "0.03", "--steps", "2"]
    assert main([*argv, "--defense", "jpeg", "--defense-quality", "50"]) == 0
    rows = list(csv.DictReader((tmp_path / "adv" / "metrics.csv").open()))
    assert rows[0]["defense"] == "jpeg" and rows[0]["defense_p_fake_after"]
    assert main([*argv, "--defense-quality", "50"]) == 2  # a defence flag without a defence
    assert main([*argv, "--defense", "jpeg", "--defense-bits", "3"]) == 2
