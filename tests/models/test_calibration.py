"""Operating points (models/evaluation/calibration.py), the checkpoint's fitted threshold, and /detect using it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointMeta
from models.evaluation.calibration import auroc, calibrate, eer, fit_threshold, operating_points, rates_at, roc_curve
from tests import imagefiles as files
from tests.app.test_api import make_client
from tests.conftest import make_tiny_checkpoint

FAKE, REAL = 0, 1


def scores(n: int = 400, seed: int = 0, shift: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([FAKE, REAL] * (n // 2))
    z = torch.randn(n, generator=g) + torch.where(y == FAKE, shift, 0.0)
    return torch.sigmoid(z), y


def test_roc_of_a_perfect_and_a_useless_detector() -> None:
    y = torch.tensor([FAKE, FAKE, REAL, REAL])
    fpr, tpr, _ = roc_curve(torch.tensor([0.9, 0.8, 0.2, 0.1]), y)
    assert auroc(fpr, tpr) == 1.0 and eer(fpr, tpr) == 0.0
    fpr, tpr, _ = roc_curve(torch.tensor([0.5, 0.5, 0.5, 0.5]), y)  # all tied: the diagonal
    assert auroc(fpr, tpr) == pytest.approx(0.5) and eer(fpr, tpr) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fakes and reals"):
        roc_curve(torch.tensor([0.1, 0.2]), torch.tensor([FAKE, FAKE]))


def test_auroc_is_the_mann_whitney_statistic() -> None:
    p, y = scores()
    pos, neg = p[y == FAKE], p[y == REAL]
    want = float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())
    fpr, tpr, _ = roc_curve(p, y)
    assert auroc(fpr, tpr) == pytest.approx(want, abs=1e-9)
    points = operating_points(p, y)
    assert 0 < points["tpr_at_fpr_1pct"] <= points["tpr_at_fpr_5pct"] < 1
    assert 0 < points["eer"] < 0.5


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_the_fitted_threshold_keeps_the_fpr_and_is_the_lowest_that_does(target: float) -> None:
    p, y = scores(seed=1)
    t = fit_threshold(p, y, target)
    assert rates_at(p, y, t)["fpr"] <= target
    lower = p[p < t]
    if lower.numel():  # the next lower score would break the target
        assert rates_at(p, y, float(lower.max()))["fpr"] > target


def test_the_record_reports_val_fit_and_test_rates() -> None:
    (vp, vy), (tp, ty) = scores(seed=2), scores(seed=3)
    record = calibrate(vp, vy, tp, ty, target_fpr=0.05)
    assert record["fitted_on"]["fpr"] <= 0.05
    assert record["test"]["at_threshold"] == rates_at(tp, ty, record["threshold"])
    assert record["test"]["n"] == 400


def test_checkpoints_without_a_calibration_have_no_threshold() -> None:
    base = {"architecture": "vgg16_slim", "input_size": [32, 32], "mean": [0, 0, 0], "std": [1, 1, 1]}
    assert CheckpointMeta.from_json(base, source="x").threshold is None  # format 1, no metrics
    with_cal = {**base, "metrics": {"calibration": {"threshold": 0.3, "target_fpr": 0.05}}}
    assert CheckpointMeta.from_json(with_cal, source="x").threshold == 0.3
    odd = {**base, "metrics": {"calibration": {"threshold": "high"}}}
    assert CheckpointMeta.from_json(odd, source="x").threshold is None


def test_detect_uses_the_checkpoint_threshold_when_the_request_gives_none(tmp_path: Path, redis_url: str) -> None:
    make_tiny_checkpoint(tmp_path, "tiny-vgg")
    meta_path = tmp_path / "tiny-vgg.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"] = {"calibration": {"threshold": 0.0, "target_fpr": 1.0}}  # everything is fake at 0
    meta_path.write_text(json.dumps(meta))
    f = {"file": ("g.png", files.encode(files.gradient_rgb(40, 30), "PNG"))}
    with make_client(tmp_path, redis_url) as c:
        body = c.post("/detect", files=f).json()
        assert body["threshold"] == 0.0 and body["threshold_source"] == "checkpoint"
        assert body["results"][0]["label"] == "fake"
        body = c.post("/detect", files=f, data={"threshold": "1.0"}).json()
        assert body["threshold"] == 1.0 and body["threshold_source"] == "request"
    meta["metrics"] = {}
    meta_path.write_text(json.dumps(meta))
    with make_client(tmp_path, redis_url) as c:
        body = c.post("/detect", files=f).json()
        assert body["threshold"] == 0.5 and body["threshold_source"] == "default"
