"""``deepfake-guard robustness``: the two-class suite's RobustBench-shaped record validates against the schema kept in
docs/schemas/robustness.schema.json (checked with jsonschema, a dev dependency), and its figures are consistent."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from deepfake_guard.cli import main
from deepfake_guard.commands.argtypes import parse_eps
from deepfake_guard.commands.robustness import SCHEMA
from models.evaluation.robustness import SUITE, SUITE_L2


def tiny_folder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in ("fake", "real"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def run(tmp_path: Path, checkpoints: Path, *extra: str, eps: str = "8/255") -> dict[str, object]:
    out = tmp_path / "r.json"
    argv = ["robustness", str(checkpoints / "tiny-vgg"), str(tiny_folder(tmp_path / "data")), "--eps", eps]
    argv += ["--budget", "quick", "-n", "4", "--device", "cpu", "-o", str(out), *extra]
    assert main(argv) == 0
    record: dict[str, object] = json.loads(out.read_text())
    jsonschema.validate(record, json.loads(SCHEMA.read_text()))
    return record


@pytest.mark.slow
def test_the_record_validates_and_adds_up(tmp_path: Path, tiny_checkpoints: Path) -> None:
    record = run(tmp_path, tiny_checkpoints)
    images = record["per_image"]
    assert isinstance(images, list) and record["n_images"] == len(images) == 4
    assert {i["label"] for i in images} == {"fake", "real"}  # alternating classes
    assert record["eps"] == pytest.approx(8 / 255) and record["eps_text"] == "8/255"
    assert record["clean_acc"] == 100 * sum(i["clean_correct"] for i in images) / 4
    assert record["robust_acc"] == 100 * sum(i["robust"] for i in images) / 4 <= record["clean_acc"]
    for i in images:
        assert i["robust"] == (i["clean_correct"] and not any(i["attacks"].values()))
        assert list(i["attacks"]) == [s.name for s in SUITE]
        if not i["clean_correct"]:
            assert set(i["attacks"].values()) == {None}  # a misclassified image is not attacked
    assert isinstance(record["attack_forward_passes"], int) and record["attack_forward_passes"] > 4
    assert record["preprocessing"]["defense"] is None  # type: ignore[index]


def test_the_l2_suite_writes_an_l2_record(tmp_path: Path, tiny_checkpoints: Path) -> None:
    record = run(tmp_path, tiny_checkpoints, "--norm", "l2", eps="1.5")
    assert record["threat_model"] == "L2" and record["norm"] == "l2" and record["eps"] == 1.5
    assert record["eps_text"] == "1.5"
    assert [a["name"] for a in record["attacks"]] == [s.name for s in SUITE_L2]  # type: ignore[union-attr]
    for i in record["per_image"]:  # type: ignore[union-attr]
        assert list(i["attacks"]) == [s.name for s in SUITE_L2]
    assert record["unreliable"] is False and record["flags"] == []  # a plain detector, no defence


@pytest.mark.slow
def test_the_record_states_the_defense(tmp_path: Path, tiny_checkpoints: Path) -> None:
    record = run(tmp_path, tiny_checkpoints, "--defense", "bitdepth", "--defense-bits", "4")
    defense = record["preprocessing"]["defense"]  # type: ignore[index]
    assert defense["purifier"] == "bitdepth" and defense["params"] == {"bits": 4} and defense["bpda"] == "identity"


def test_bad_requests_are_refused(tmp_path: Path, tiny_checkpoints: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.5") == 0.5
    for bad in ("0", "2", "1/0", "eight"):
        with pytest.raises(Exception, match="eps"):
            parse_eps(bad)
    data = str(tiny_folder(tmp_path / "d"))
    assert main(["robustness", str(tiny_checkpoints / "nope"), data, "-o", str(tmp_path / "x.json")]) == 2
    assert "nope" in capsys.readouterr().out
    argv = ["robustness", str(tiny_checkpoints / "tiny-vgg"), data, "--defense-bits", "3"]
    assert main(argv) == 2 and "--defense-bits" in capsys.readouterr().out
    argv = ["robustness", str(tiny_checkpoints / "tiny-vgg"), data, "--eps", "2"]  # an L-inf budget above 1
    assert main(argv) == 2 and "eps must be in (0, 1]" in capsys.readouterr().out
    argv = ["robustness", str(tiny_checkpoints / "tiny-vgg"), data, "--eps", "-1", "--norm", "l2"]
    assert main(argv) == 2 and "positive L2 norm" in capsys.readouterr().out
    invalid = {"name": "x"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(invalid, json.loads(SCHEMA.read_text()))
