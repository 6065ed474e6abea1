"""``deepfake-guard audit`` end to end on a small folder: the record validates against docs/schemas/audit.schema.json,
the HTML report loads nothing from elsewhere, the CSV has a row per image, and bad input is an ``error:`` line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import jsonschema
import pytest

from deepfake_guard.cli import main as cli
from models.checkpoint import DEMO_CHECKPOINTS
from tests.models.test_audit import write_folder

SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "audit.schema.json"


@pytest.mark.slow
def test_the_quick_audit_writes_a_valid_record_a_self_contained_report_and_a_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder(tmp_path / "data", n=4, size=48)
    out = tmp_path / "out"
    argv = ["audit", str(DEMO_CHECKPOINTS / "demo-resnet18"), str(data), "--out", str(out), "--eps", "4/255",
            "8/255", "--transfer-from", str(DEMO_CHECKPOINTS / "demo-vgg16"), "--set", "eot_pgd.steps=3",
            "--set", "eot_pgd.eot=2", "--set", "transfer.steps=2", "--set", "through_defense.steps=2",
            "--defense", "jpeg", "--shard-size", "3", "--threads", "1", "--l2-rms", "2/255"]  # fmt: skip
    assert cli(argv) == 0
    record = json.loads((out / "report.json").read_text())
    jsonschema.validate(record, json.loads(SCHEMA.read_text()))
    families = {r["family"] for r in record["threats"]}
    assert families == {"clean", "sanity", "laundering", "white-box Linf", "white-box L2", "survives laundering",
                        "transfer", "through a defence"}  # fmt: skip
    (l2_row,) = [r for r in record["threats"] if r["name"] == "l2_suite"]
    size = record["detector"]["fitting"]["input_size"]
    assert l2_row["input_size"] == [3, *size] and l2_row["eps_l2"] == pytest.approx(
        2 / 255 * (3 * size[0] * size[1]) ** 0.5
    )
    assert record["eps"] == "8/255" and record["profile"]["overrides"]["eot_pgd"] == {"steps": 3, "eot": 2}
    assert next(r for r in record["threats"] if r["name"] == "eot_pgd")["params"]["steps"] == 3
    assert record["detector"]["demo_data"] is True and record["threshold_source"] == "default"
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", page)  # self-contained
    assert page.count("data:image/png;base64,") >= 3 and record["summary"] in page.replace("&#x27;", "'")
    with (out / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"fake", "real"}
    assert "wrote" in capsys.readouterr().out


def test_bad_input_is_an_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["audit", str(DEMO_CHECKPOINTS / "demo-resnet18"), str(tmp_path / "empty")]) == 2
    assert "needs a fake/ or a real/ folder" in capsys.readouterr().out
    data = write_folder(tmp_path / "data", n=1)
    assert cli(["audit", str(DEMO_CHECKPOINTS / "demo-resnet18"), str(data), "--set", "resave_jpeg.q=3"]) == 2
    assert "takes ['quality']" in capsys.readouterr().out
    assert cli(["audit", str(DEMO_CHECKPOINTS / "demo-resnet18"), str(data), "--set", "transfer.steps=2"]) == 2
    assert "transfer needs a transfer source" in capsys.readouterr().out  # refused, not dropped
    with pytest.raises(SystemExit):
        cli(["audit", str(DEMO_CHECKPOINTS / "demo-resnet18"), str(data), "--shard-size", "0"])


def test_with_queue_what_only_a_local_audit_has_is_refused_never_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder(tmp_path / "data", n=1)
    nowhere = "http://127.0.0.1:9"  # refused before any request is made
    for extra, needle in (
        (["--threads", "1", "--shard-size", "3"], "['--shard-size', '--threads'] apply only to an audit run here"),
        (["--device", "cpu"], "['--device'] apply only to an audit run here"),
        (["--defense-quality", "60"], "['--defense-quality'] apply only with --defense"),
        (["--defense", "jpeg", "--eot-samples", "3", "--defense-kernel-size", "5"], "do not apply to --defense jpeg"),
    ):
        assert cli(["audit", "demo-resnet18", str(data), "--queue", nowhere, *extra]) == 2
        assert needle in capsys.readouterr().out
