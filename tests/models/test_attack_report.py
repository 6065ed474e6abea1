"""Honest attack results: delivery as 8-bit files, success judged on them, black-box transfer."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from models import registry
from models.attacks import CW_LIMITS, CW_PRESETS, cw_l2, fgsm, pgd
from models.attacks.measure import AttackReport, attack_and_measure, deliver, perturbation_picture
from models.attacks.registry import attack_steps, check_params, resolve_params, tunable_params
from models.detector import Detector
from models.images import decode_image, load_image_file, save_png


def detector(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    return Detector(backbone, input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)).eval()


class GradRecorder(nn.Module):
    """Wraps a model and records, per forward, whether autograd was recording."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(torch.is_grad_enabled())
        return self.inner(x)


def images(n: int = 4, seed: int = 0) -> Tensor:
    """Images as read from 8-bit files (so an unperturbed delivery is exactly the input)."""
    x = torch.rand(n, 3, 12, 10, generator=torch.Generator().manual_seed(seed))
    return torch.round(x * 255) / 255


def assert_consistent(reports: list[AttackReport], target: nn.Module, x: Tensor) -> None:
    delivered = torch.stack([r.adv for r in reports])
    p_after = target.p_fake(delivered) if isinstance(target, Detector) else None
    for i, r in enumerate(reports):
        labels_differ = r.label_after != r.label_before
        assert r.success == labels_differ
        assert r.label_after == ("fake" if r.p_fake_after >= 0.5 else "real")
        assert r.label_before == ("fake" if r.p_fake_before >= 0.5 else "real")
        if p_after is not None:
            assert r.p_fake_after == pytest.approx(float(p_after[i]), abs=1e-6)
        assert r.l2 == pytest.approx(float((r.adv - x[i]).norm()), rel=1e-5)
        assert r.linf == pytest.approx(float((r.adv - x[i]).abs().max()), rel=1e-5)


@pytest.mark.parametrize("method", ["fgsm", "pgd", "cw_l2"])
def test_delivered_png_is_8bit_and_success_matches_its_labels(method: str) -> None:
    target, x = detector(), images()
    params = {"eps": 0.05} if method != "cw_l2" else {"max_iterations": 30, "search_steps": 3, "kappa": 0.0}
    reports = attack_and_measure(method, target, x, params=params, generator=torch.Generator().manual_seed(0))
    assert len(reports) == len(x)
    for r in reports:
        assert r.adv.shape == (3, 12, 10) and r.adv.dtype == torch.float32
        levels = r.adv * 255
        assert torch.equal(levels, levels.round())  # exactly on the 8-bit grid
        assert torch.equal(decode_image(r.encoded), r.adv)  # the file holds exactly what was judged
        assert r.encoded.startswith(b"\x89PNG")
        assert r.source_p_fake_before is None and r.source_p_fake_after is None
    assert_consistent(reports, target, x)
    if method != "cw_l2":
        assert all(r.linf <= params["eps"] + 1 / 255 for r in reports)  # rounding adds at most half a level
    if method == "cw_l2":
        assert any(r.success for r in reports)


def test_jpeg75_delivery_judges_the_decoded_jpeg() -> None:
    target, x = detector(), images()
    reports = attack_and_measure("fgsm", target, x, params={"eps": 0.03}, save_format="jpeg75")
    for r in reports:
        assert r.encoded.startswith(b"\xff\xd8")
        assert torch.equal(decode_image(r.encoded), r.adv)
        assert r.save_format == "jpeg75"
    assert_consistent(reports, target, x)


def test_quantisation_can_undo_a_float_success() -> None:
    # A minimal kappa=0 CW image sits on the decision boundary; rounding it to 8 bits is judged honestly.
    target, x = detector(), images(6)
    reports = attack_and_measure("cw_l2", target, x, params={"kappa": 0.0, "c_init": 1.0})
    assert_consistent(reports, target, x)


def test_black_box_crafts_on_source_and_only_measures_target() -> None:
    target, source = GradRecorder(detector(0)), GradRecorder(detector(1))
    x = images()
    reports = attack_and_measure("pgd", target, x, source=source, params={"eps": 0.05, "steps": 3, "step_size": 0.02})
    assert not any(target.calls)  # target: forward passes without autograd only
    assert sum(source.calls) == 3  # source: one gradient pass per PGD step
    for r in reports:
        assert r.source_p_fake_before is not None and r.source_p_fake_after is not None
    assert_consistent(reports, target, x)


def test_default_label_is_the_crafting_model_own_verdict() -> None:
    target, source, x = detector(0), detector(1), images(6)
    reports = attack_and_measure("fgsm", target, x, source=source, params={"eps": 0.05})
    source_labels = (source.p_fake(x) < 0.5).long()  # 0 = fake, 1 = real
    expected, _ = deliver(fgsm(source, x, source_labels, eps=0.05), "png")
    assert torch.equal(torch.stack([r.adv for r in reports]), expected)
    for r, p in zip(reports, source.p_fake(expected).tolist(), strict=True):
        assert r.source_p_fake_after == pytest.approx(p, abs=1e-6)


def test_given_labels_judge_success_against_them() -> None:
    target, x = detector(), images()
    own = (target.p_fake(x) < 0.5).long()  # 0 = fake, 1 = real
    reports = attack_and_measure("fgsm", target, x, params={"eps": 0.0}, y=1 - own)
    assert all(r.success for r in reports)  # already "misclassified" w.r.t. the given labels
    assert all(r.psnr == math.inf and r.l2 == 0 for r in reports)


def own_labels(model: Detector, x: Tensor) -> Tensor:
    return (model.p_fake(x) < 0.5).long()  # 0 = fake, 1 = real


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("pgd", {"eps": 0.3, "steps": 30, "step_size": 0.02}),
        ("cw_l2", {"search_steps": 5, "max_iterations": 100, "kappa": 0.0, "lr": 0.1}),
    ],
)
def test_targeted_without_y_moves_the_target_to_its_other_class(method: str, params: dict) -> None:
    target, x = detector(), images(8)
    before = own_labels(target, x)
    reports = attack_and_measure(method, target, x, params={**params, "targeted": True})
    after = own_labels(target, torch.stack([r.adv for r in reports]))
    assert torch.equal(after, 1 - before)  # every delivered file reached the other class...
    assert all(r.success for r in reports)  # ...and the report says so
    assert_consistent(reports, target, x)


def test_targeted_black_box_aims_at_the_other_class_of_the_target_not_of_the_source() -> None:
    target, source, x = detector(0), detector(1), images(8)
    wanted = 1 - own_labels(target, x)
    assert (own_labels(source, x) == wanted).all()  # they disagree: untargeted would push the wrong way
    params = {"eps": 0.3, "steps": 30, "step_size": 0.02}
    targeted = attack_and_measure(
        "pgd", target, x, source=source, params={**params, "targeted": True}, generator=torch.Generator().manual_seed(0)
    )
    expected, _ = deliver(
        pgd(source, x, wanted, **params, targeted=True, generator=torch.Generator().manual_seed(0)), "png"
    )
    assert torch.equal(torch.stack([r.adv for r in targeted]), expected)  # crafted towards the target's other class
    assert_consistent(targeted, target, x)  # success: the target's label moved (to the only other class)
    untargeted = attack_and_measure("pgd", target, x, source=source, params=params)
    assert sum(r.success for r in targeted) > sum(r.success for r in untargeted)


def test_given_y_still_wins_over_the_derived_target() -> None:
    target, x = detector(), images()
    own = own_labels(target, x)
    reports = attack_and_measure("fgsm", target, x, params={"eps": 0.0, "targeted": True}, y=own)
    assert all(r.success for r in reports)  # the given target is the clean verdict: reached without a change


def test_validation_names_the_bad_value() -> None:
    target, x = detector(), images(1)
    with pytest.raises(ValueError, match=r"'deepfool'.*cw_l2.*fgsm.*pgd"):
        attack_and_measure("deepfool", target, x, params={})
    with pytest.raises(ValueError, match=r"\['epsilon', 'steps'\]"):
        attack_and_measure("fgsm", target, x, params={"epsilon": 0.1, "steps": 3})
    with pytest.raises(ValueError, match="'gif'"):
        attack_and_measure("fgsm", target, x, params={}, save_format="gif")
    with pytest.raises(ValueError, match="'fast'"):
        resolve_params("cw_l2", {"preset": "fast"})
    with pytest.raises(ValueError, match="progress"):
        resolve_params("cw_l2", {"progress": print})


@pytest.mark.parametrize(
    ("method", "params", "named"),
    [
        ("cw_l2", {"kappa": math.inf}, r"^kappa must be a finite number"),
        ("cw_l2", {"kappa": 1e308}, r"^kappa .*1e\+06"),
        ("cw_l2", {"c_init": 1e308}, r"^c_init .*1e\+10"),
        ("cw_l2", {"c_init": math.inf}, r"^c_init must be a finite number"),  # not blamed on c_max
        ("cw_l2", {"c_init": 1e308, "c_max": 1e308}, r"^c_init"),
        ("cw_l2", {"c_max": math.inf}, r"^c_max must be a finite number"),
        ("cw_l2", {"c_init": 100.0, "c_max": 10.0}, r"^c_max must be at least c_init \(100.0\), got 10.0"),
        ("cw_l2", {"lr": math.nan}, r"^lr must be a finite number"),
        ("cw_l2", {"preset": "paper", "max_iterations": 0}, r"^max_iterations"),
        ("fgsm", {"eps": math.nan}, r"^eps must be a finite number in \[0, 1\], got nan"),
        ("pgd", {"step_size": math.inf}, r"^step_size must be a finite number"),
        ("pgd", {"steps": 2.5}, r"^steps must be an integer"),
    ],
)
def test_check_params_refuses_what_the_attack_would(method: str, params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_params(method, params)
    with pytest.raises(ValueError, match=named):  # the same message, from the attack itself
        attack_and_measure(method, detector(), images(1), params=params)


def test_cw_runs_at_its_largest_constants_without_overflow() -> None:
    target, x = detector(), images(2)
    y = own_labels(target, x)
    big = {"kappa": CW_LIMITS["kappa"], "c_init": CW_LIMITS["c_init"], "search_steps": 3, "max_iterations": 3}
    for c_max in (CW_LIMITS["c_max"], None):
        result = cw_l2(target, x, y, **big, c_max=c_max, lr=0.01)
        assert torch.isfinite(result.c).all() and (result.c <= CW_LIMITS["c_max"]).all()
        assert torch.isfinite(result.adv).all()


def test_attack_steps_bound_the_gradient_steps() -> None:
    assert attack_steps("fgsm", {"eps": 0.1}) == 1
    assert attack_steps("pgd", {}) == 10 and attack_steps("pgd", {"steps": 7}) == 7
    assert attack_steps("cw_l2", {}) == 5 * 100
    assert attack_steps("cw_l2", {"preset": "paper", "search_steps": 2}) == 2 * 1000


def test_params_defaults_and_presets() -> None:
    assert resolve_params("fgsm", {}) == {"eps": 0.02}
    assert resolve_params("cw_l2", {"preset": "paper", "lr": 0.05}) == {**CW_PRESETS["paper"], "lr": 0.05}
    assert "generator" not in tunable_params("pgd") and "eps" in tunable_params("pgd")
    assert attack_steps("cw_l2", {"preset": "paper"}) == 5 * 1000
    assert attack_steps("cw_l2", {}) < attack_steps("cw_l2", {"preset": "paper"})


def test_deliver_png_rounds_to_nearest_level() -> None:
    adv = torch.tensor([0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    delivered, blobs = deliver(adv, "png")
    assert torch.equal(delivered[0, 0].flatten(), torch.tensor([0.0, 0.0, 1.0, 255.0]) / 255)
    assert len(blobs) == 1


def test_perturbation_picture() -> None:
    x = images(2)
    adv = x.clone()
    adv[0, 0, 0, 0] += 0.01
    adv[0, 1, 1, 1] -= 0.005
    pic = perturbation_picture(x, adv)
    assert pic.shape == x.shape and pic.min() >= 0 and pic.max() <= 1
    assert pic[0, 0, 0, 0] == pytest.approx(1.0) and pic[0, 1, 1, 1] == pytest.approx(0.25, abs=1e-5)
    assert torch.all(pic[1] == 0.5)  # no perturbation: flat grey
    assert torch.equal(perturbation_picture(x[0], adv[0]), pic[0])


def test_metrics_hold_no_tensors() -> None:
    (r,) = attack_and_measure("fgsm", detector(), images(1), params={})
    m = r.metrics()
    assert "adv" not in m and "encoded" not in m
    assert {"p_fake_before", "p_fake_after", "l2", "linf", "psnr", "iterations", "success"} <= set(m)


def test_attack_command_writes_judged_files_and_csv(tmp_path: Path) -> None:
    from deepfake_guard.cli import main
    from models import checkpoint
    from models.checkpoint import CheckpointMeta

    spec = registry.get("resnet18")
    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="resnet18", input_size=(16, 16), mean=spec.mean, std=spec.std)
    checkpoint.save(spec.build(input_size=(16, 16)), tmp_path / "ckpt" / "tiny", meta)
    src = tmp_path / "in"
    (src / "fake").mkdir(parents=True)
    for i, size in enumerate([(20, 16), (20, 16), (12, 18)]):
        x = torch.rand(3, *size, generator=torch.Generator().manual_seed(i))
        save_png(x, src / "fake" / f"im{i}.png")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["attack", str(src), "-o", str(out), "--target", "tiny", "--checkpoints", str(tmp_path / "ckpt")]
    assert main([*argv, "--method", "fgsm", "--eps", "0.05", "--device", "cpu", "--perturbation"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["file"] for r in rows] == [f"fake/im{i}.png" for i in range(3)]
    target = checkpoint.load(tmp_path / "ckpt" / "tiny").detector
    for r in rows:
        delivered = load_image_file(out / r["file"])
        assert float(r["p_fake_after"]) == pytest.approx(float(target.p_fake(delivered[None])), abs=1e-5)
        assert (r["success"] == "True") == (r["label_after"] != r["label_before"])
        assert (out / r["file"]).with_name(Path(r["file"]).stem + ".perturbation.png").exists()
    assert main([*argv, "--method", "fgsm", "--label", "fake", "--save-format", "jpeg75"]) == 0
    assert (out / "fake" / "im0.jpg").read_bytes().startswith(b"\xff\xd8")
    assert main([*argv, "--target", "missing"]) == 2


def test_metrics_are_strict_json_even_for_an_unchanged_image() -> None:
    import json

    (r,) = attack_and_measure("fgsm", detector(), images(1), params={"eps": 1e-9})
    assert r.psnr == math.inf
    m = r.metrics()
    assert m["psnr"] is None
    json.dumps(m, allow_nan=False)
