"""The audit's parts on tiny detectors: intervals, threats, computed sanity flags, shard-order independence."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from models.audit import stats
from models.audit.profiles import Threat, threats_for
from models.audit.runner import AuditData, assemble, plan, run_audit, run_shard
from models.audit.threats import AuditTarget, get
from models.detector import Detector


def write_folder(root: Path, n: int = 6, size: int = 32, *, reals: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("fake", "real") if reals else ("fake",):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            if cls == "fake":
                pixels = (pixels // 2 + 64).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def tiny_detector(seed: int = 0, front: nn.Module | None = None) -> Detector:
    """A linear detector on 32 px images: its score moves with every pixel (a random CNN this small scores nearly
    every image alike), so what a front layer does to it shows."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    with torch.no_grad():
        head[1].weight.mul_(3.0)
    backbone = head if front is None else nn.Sequential(front, head)
    return Detector(backbone, input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()


def target_of(det: Detector, threshold: float = 0.5) -> AuditTarget:
    return AuditTarget("tiny", det, threshold)


def test_wilson_intervals_hold_their_rate_and_say_how_little_small_sets_know() -> None:
    assert stats.wilson(0, 3) == (0.0, pytest.approx(0.5615, abs=1e-3))
    lo, hi = stats.wilson(3, 3)  # type: ignore[misc]
    assert hi == 1.0 and lo == pytest.approx(0.4385, abs=1e-3)
    assert stats.rate(0, 0) == {"k": 0, "n": 0, "rate": None, "ci95": None}
    for k in range(11):
        lo, hi = stats.wilson(k, 10)  # type: ignore[misc]
        assert lo <= k / 10 <= hi


def test_the_bootstrap_interval_brackets_the_auroc() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 30)
    p = torch.where(labels == 0, 0.6, 0.4) + 0.3 * torch.randn(60, generator=gen)
    value = stats.auroc_of(p, labels)
    lo, hi = stats.bootstrap_auroc(p, labels, seed=0)  # type: ignore[misc]
    assert value is not None and lo <= value <= hi and hi - lo > 0.02


def test_threats_refuse_what_they_cannot_mean() -> None:
    with pytest.raises(ValueError, match="unknown threat 'jpg'; choose one of"):
        get("jpg")
    with pytest.raises(ValueError, match=r"resave_jpeg.quality"):
        Threat.of("resave_jpeg", {"quality": 0})
    with pytest.raises(ValueError, match="takes"):
        Threat.of("blur", {"radius": 2})
    with pytest.raises(ValueError, match="needs a source"):
        Threat.of("transfer", {})
    ids = [t.id for t in threats_for("quick")]
    assert "linf_suite(budget=quick, eps=8/255)" in ids and "resave_jpeg(quality=75)" in ids


class Dropout(nn.Module):
    """A random layer left active at inference."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, p=0.3, training=True)


class Quantize(nn.Module):
    """A non-differentiable 8-level quantisation in front: the gradient is zero everywhere."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x * 7) / 7


def _flags(det: Detector, data: AuditData) -> dict[str, dict]:
    threats = [Threat.of("clean"), Threat.of("sanity")]
    results = run_audit(target_of(det), data, threats)
    record = assemble(target_of(det), data, threats, results, meta={}, seed=0)
    return {f["flag"]: f for f in record["sanity"]["flags"]}


def test_sanity_flags_fire_on_a_random_layer_and_on_a_masked_gradient(tmp_path: Path) -> None:
    data = AuditData.from_folder(write_folder(tmp_path, n=4))
    assert _flags(tiny_detector(), data) == {}  # a plain detector raises none
    random_flags = _flags(tiny_detector(front=Dropout()), data)
    assert "randomness" in random_flags and random_flags["randomness"]["images"] == 8
    masked = _flags(tiny_detector(front=Quantize()), data)
    assert "bad_gradients" in masked and masked["bad_gradients"]["images"] == 8
    assert "randomness" not in masked


def test_a_masked_gradient_shows_as_black_box_beating_white_box(tmp_path: Path) -> None:
    """Behind a zero gradient APGD-CE and FAB cannot move, Square (no gradient) can: the flag says so."""
    data = AuditData.from_folder(write_folder(tmp_path, n=4))
    det = tiny_detector(front=Quantize())
    threats = [Threat.of("clean"), Threat.of("linf_suite", {"eps": 32 / 255, "budget": "quick"})]
    record = assemble(target_of(det), data, threats, run_audit(target_of(det), data, threats), meta={}, seed=0)
    suite = next(r for r in record["threats"] if r["name"] == "linf_suite")["metrics"]
    assert suite["fooled_by"].get("square", 0) > 0, suite["fooled_by"]  # APGD-CE flips only by its random start
    flags = {f["flag"]: f for f in record["sanity"]["flags"]}
    assert flags["black_box_beats_white_box"]["images"] == suite["fooled_by"]["square"]


def test_the_record_does_not_depend_on_the_order_shards_run_in(tmp_path: Path) -> None:
    data = AuditData.from_folder(write_folder(tmp_path, n=5))
    det = tiny_detector()
    threats = [Threat.of("clean"), Threat.of("noise", {"sigma": 0.05}),
               Threat.of("linf_suite", {"eps": 4 / 255, "budget": "quick"})]  # fmt: skip
    in_order = run_audit(target_of(det), data, threats, seed=3, shard_size=4)
    parts = plan(len(data.items), threats, shard_size=4)
    random.Random(0).shuffle(parts)
    shuffled = {p.key: run_shard(target_of(det), data, p, seed=3) for p in parts}
    a = assemble(target_of(det), data, threats, in_order, meta={}, seed=3, shard_size=4)
    b = assemble(target_of(det), data, threats, shuffled, meta={}, seed=3, shard_size=4)
    assert a == b


def test_fakes_only_give_evasion_rates_and_no_auroc(tmp_path: Path) -> None:
    data = AuditData.from_folder(write_folder(tmp_path, n=3, reals=False))
    det = tiny_detector()
    threats = [Threat.of("clean"), Threat.of("resave_jpeg", {"quality": 50})]
    record = assemble(target_of(det), data, threats, run_audit(target_of(det), data, threats), meta={}, seed=0)
    clean = record["threats"][0]["metrics"]
    assert clean["evasion"]["n"] == 3 and clean["false_alarms"] == {"k": 0, "n": 0, "rate": None, "ci95": None}
    assert clean["auroc"] is None and clean["eer"] is None


def test_a_folder_without_fake_or_real_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match=r"needs a fake/ or a real/ folder of images; found \['cats'\]"):
        AuditData.from_folder(tmp_path)


def test_every_verdict_is_at_the_operating_threshold(tmp_path: Path) -> None:
    data = AuditData.from_folder(write_folder(tmp_path, n=4))
    det = tiny_detector()
    threats = [Threat.of("clean")]
    p = torch.tensor(run_audit(target_of(det), data, threats)["clean@0"]["p_fake"])
    cut = float(p.median())
    record = assemble(target_of(det, cut), data, threats, run_audit(target_of(det, cut), data, threats), meta={},
                      seed=0)  # fmt: skip
    called_fake = (p.double() >= cut).tolist()
    labels = data.labels.tolist()
    evaded = sum(1 for c, y in zip(called_fake, labels, strict=True) if y == 0 and not c)
    assert record["threats"][0]["metrics"]["evasion"]["k"] == evaded and record["threshold"] == cut


def _margin_distance(det: Detector, data: AuditData) -> Tensor:
    """Each image's L2 distance to the tiny linear detector's boundary (the pixel box ignored): the smallest L2
    perturbation that can flip it."""
    x = torch.stack([data.native(i) for i in range(len(data.items))])
    layer = det.backbone[1] if isinstance(det.backbone[0], nn.Flatten) else det.backbone[-1][1]
    w = (layer.weight[1] - layer.weight[0]).detach() / 0.25  # the detector's (x - 0.5) / 0.25 folded in
    with torch.no_grad():
        logits = det(x)
    return (logits[:, 1] - logits[:, 0]).abs() / w.norm()


def test_the_l2_suite_flips_nothing_below_the_boundary_and_everything_well_beyond(tmp_path: Path) -> None:
    data = AuditData.from_folder(write_folder(tmp_path, n=4))
    det = tiny_detector()
    dist = _margin_distance(det, data)
    side = math.sqrt(3 * 32 * 32)
    small, large = 0.5 * float(dist.min()) / side, 3 * float(dist.max()) / side  # per-pixel budgets
    threats = [Threat.of("clean"), *(Threat.of("l2_suite", {"rms": r, "budget": "quick"}) for r in (small, large))]
    record = assemble(target_of(det), data, threats, run_audit(target_of(det), data, threats), meta={}, seed=0)
    clean, below, beyond = (r["metrics"] for r in record["threats"])
    rows = [r for r in record["threats"] if r["name"] == "l2_suite"]
    assert [r["family"] for r in rows] == ["white-box L2"] * 2 and rows[0]["input_size"] == [3, 32, 32]
    assert rows[1]["eps_l2"] == pytest.approx(3 * float(dist.max()), rel=1e-6)  # the radius, stated per image size
    assert below["accuracy"]["k"] == clean["accuracy"]["k"] and "fooled_by" in below  # no L2 move that small flips
    assert beyond["accuracy"]["k"] == 0, beyond  # every image flipped
    assert set(beyond["fooled_by"]) <= {"clean", "apgd_ce_l2", "fab_l2"}
    flags = {f["flag"] for f in record["sanity"]["flags"]}
    assert "robustness_rises_with_eps" not in flags


def test_the_quick_profile_has_an_l2_curve_whose_budgets_only_l2_rms_sets() -> None:
    rows = [t for t in threats_for("quick") if t.name == "l2_suite"]
    assert [t.kwargs["rms"] for t in rows] == [1 / 255, 2 / 255]
    assert [t.id for t in threats_for("quick", l2=[3 / 255]) if t.name == "l2_suite"] == [
        "l2_suite(budget=quick, rms=3/255)"
    ]
    with pytest.raises(ValueError, match="--l2-rms"):
        threats_for("quick", overrides={"l2_suite": {"rms": 0.1}})
    with pytest.raises(ValueError, match="--eps"):
        threats_for("quick", overrides={"linf_suite": {"eps": 0.1}})


def test_the_suites_own_flags_make_a_robustness_record_unreliable() -> None:
    """``deepfake-guard robustness`` computes ``unreliable`` from these (it used to write false whatever happened)."""
    from models.attacks.adaptive import resolve_defense
    from models.audit.sanity import suite_flags

    plain = [{"apgd_ce": True, "fab": None, "square": None}, {"apgd_ce": False, "fab": False, "square": False}]
    assert suite_flags(plain, [0.0, 0.0], defense=None) == []
    square = [{"apgd_ce": False, "fab": False, "square": True}]
    assert [f["flag"] for f in suite_flags(square, [0.0], defense=None)] == ["black_box_beats_white_box"]
    random = suite_flags(plain, [0.0, 0.2], defense=None)
    assert [(f["flag"], f["images"]) for f in random] == [("randomness", 1)]
    dip = resolve_defense({"method": "dip", "eot_samples": 2})
    assert [f["flag"] for f in suite_flags(plain, [0.0, 0.0], defense=dip)] == ["randomized_or_iterative_defense"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(8 / 255, "8/255"), (3 / 255, "3/255"), (0.25 / 255, "0.25/255"), (1 / 510, "1/510"), (0.03, "3/100"),
     (1.5, "3/2"), (1.0, "1"), (1e-5, "1e-05")],
)  # fmt: skip
def test_budgets_are_written_as_robustbench_writes_them(value: float, text: str) -> None:
    from models.methods import eps_text

    assert eps_text(value) == text
