"""Adaptive attacks through a purifier (models/attacks/adaptive.py): BPDA, EOT and judging by resubmission."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from models import checkpoint
from models import purify as purifiers
from models.attacks.adaptive import JUDGE_SEED_OFFSET, Defended, Defense, judge, purify_once, resolve_defense
from models.attacks.measure import attack_and_measure, deliver
from models.checkpoint import DEMO_CHECKPOINTS
from models.detector import FAKE_INDEX
from models.images import load_image_file


def conv_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)
    ).eval()


def images(n: int = 2, side: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def input_grad(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out[:, 0].sum() - out[:, 1].sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("name", ["bitdepth", "jpeg"])
def test_bpda_is_the_true_forward_and_the_identity_backward(name: str) -> None:
    det, x = conv_model(), images()
    defense = Defense(purifier=name, params=purifiers.get(name).resolve({}), bpda="identity")
    assert defense.gradient == "identity"
    out, g = input_grad(Defended(det, defense), x)
    purified = purifiers.get(name).fn(x).image
    assert not torch.equal(purified, x)  # the purifier changes the image, so the test can tell them apart
    want_out, want_g = input_grad(det, purified)
    torch.testing.assert_close(out, want_out)  # the real purifier runs forward
    torch.testing.assert_close(g, want_g)  # and its backward is the identity: the detector's gradient at its output


def test_the_median_filter_is_differentiated_exactly() -> None:
    det, x = conv_model(), images()
    defense = resolve_defense({"method": "median", "kernel_size": 3})
    assert defense is not None and defense.spec.bpda == "exact"
    _, g = input_grad(Defended(det, defense), x)
    composed = nn.Sequential(_Median(), det)
    _, want = input_grad(composed, x)
    torch.testing.assert_close(g, want)
    _, straight = input_grad(det, purifiers.get("median").fn(x).image)
    assert not torch.allclose(g, straight)  # not the identity BPDA


class _Median(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return purifiers.get("median").fn(x, kernel_size=3).image


def dip_defense(**kw: object) -> Defense:
    d = resolve_defense({"method": "dip", "preset": "early", "max_iterations": 3, "seed": 7, **kw})
    assert d is not None
    return d


def test_eot_averages_independent_draws_and_a_seed_reproduces_them() -> None:
    det, x = conv_model(), images(1)
    defense = dip_defense(eot_samples=3)
    out = Defended(det, defense)(x)
    runs = [det(purify_once(defense, x, seed=7 + k)) for k in range(3)]
    torch.testing.assert_close(out, torch.stack(runs).mean(dim=0).detach())
    assert not torch.allclose(runs[0], runs[1])  # fresh seeds: the draws differ
    again = Defended(det, defense)
    torch.testing.assert_close(again(x), out)  # the defence's seed reproduces the whole sequence
    later = torch.stack([det(purify_once(defense, x, seed=7 + k)) for k in (3, 4, 5)]).mean(0)
    torch.testing.assert_close(again(x), later.detach())  # the next forward draws the next seeds
    other = Defended(det, dip_defense(eot_samples=3, seed=8))(x)
    assert not torch.allclose(other, out)


def test_eot_gradient_is_the_mean_of_the_draws_gradients() -> None:
    det, x = conv_model(), images(1)
    defense = dip_defense(eot_samples=2)
    _, g = input_grad(Defended(det, defense), x)
    grads = [input_grad(det, purify_once(defense, x, seed=7 + k).detach())[1] for k in range(2)]
    torch.testing.assert_close(g, (grads[0] + grads[1]) / 2)


def test_judging_uses_resubmissions_with_seeds_the_attack_did_not_draw() -> None:
    det, x = conv_model(), images(2)
    defense = dip_defense(resubmissions=3)
    judged = judge(det, x, defense, fake_index=FAKE_INDEX)
    assert judged.p_fake.shape == (3, 2) and judged.runs == 3
    want = torch.softmax(det(purify_once(defense, x, seed=7 + JUDGE_SEED_OFFSET + 1)), dim=1)[:, FAKE_INDEX]
    torch.testing.assert_close(judged.p_fake[1], want.detach())
    assert len(set(judged.p_fake[:, 0].tolist())) == 3  # independent runs
    jpeg = Defense(purifier="jpeg", params={"quality": 75}, resubmissions=5)
    assert judge(det, x, jpeg, fake_index=FAKE_INDEX).runs == 1  # a deterministic purifier: every run the same


def test_defenses_are_validated_by_their_declarations() -> None:
    assert resolve_defense(None) is None and resolve_defense({"method": "none"}) is None
    with pytest.raises(ValueError, match="eot_samples"):
        resolve_defense({"method": "dip", "eot_samples": 0})
    with pytest.raises(ValueError, match="quality"):
        resolve_defense({"method": "jpeg", "quality": 200})
    with pytest.raises(ValueError, match="need a defense"):
        resolve_defense({"method": "none", "eot_samples": 2})
    with pytest.raises(ValueError, match="unknown purification method"):
        resolve_defense({"method": "blur"})
    for name in ("jpeg", "median", "bitdepth"):  # settings a deterministic one-shot purifier cannot use: refused
        for setting in ("eot_samples", "resubmissions", "bpda_iterations"):
            with pytest.raises(ValueError, match=f"{setting} applies only to"):
                resolve_defense({"method": name, setting: 2})
    d = resolve_defense({"method": "dip", "max_iterations": 50, "bpda_iterations": 5})
    assert d is not None and d.attack_params()["max_iterations"] == 5 and d.params["max_iterations"] == 50
    assert d.describe()["attack_params"]["max_iterations"] == 5  # the result states the cheaper inner run


def test_an_adaptive_report_states_the_defence_and_its_verdicts() -> None:
    det, x = conv_model(), images(3)
    defense = resolve_defense({"method": "bitdepth", "bits": 4})
    reports = attack_and_measure("pgd", det, x, params={"eps": 0.05, "steps": 3}, defense=defense)
    for r in reports:
        assert r.defense is not None and r.defense["purifier"] == "bitdepth" and r.defense["resubmissions"] == 1
        assert r.success == r.defense["success_any"]
        assert r.linf <= 0.05 + 1 / 255
        delivered, _ = deliver(r.adv[None], "png")
        with torch.no_grad():
            p = torch.softmax(det(purifiers.get("bitdepth").fn(delivered, bits=4).image), dim=1)[0, FAKE_INDEX]
        assert r.defense["p_fake_after"] == pytest.approx([float(p)], abs=1e-5)


def demo_fakes(folder: Path, n: int) -> Tensor:
    files = sorted((folder / "fake").iterdir())[:n]
    return torch.stack([load_image_file(f) for f in files])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["jpeg", "bitdepth"])
def test_adaptive_pgd_fools_the_purified_demo_detector(name: str, demo_test_split: tuple[Path, object]) -> None:
    """Acceptance: at eps 8/255 adaptive PGD fools purify -> detect at least as often as the attack that ignores the
    purifier, and at least 80 % of the time, on demo test fakes the detector calls fake."""
    det = checkpoint.load(DEMO_CHECKPOINTS / "demo-resnet18").detector
    x = demo_fakes(demo_test_split[0], 24)
    with torch.no_grad():
        x = x[det.p_fake(x) >= 0.5][:12]
    y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)
    defense = resolve_defense({"method": name})
    assert defense is not None and len(x) >= 8
    params = {"eps": 8 / 255, "steps": 10, "step_size": 2 / 255}
    g = torch.Generator().manual_seed(0)
    plain = attack_and_measure("pgd", det, x, params=params, y=y, generator=g)
    delivered = torch.stack([r.adv for r in plain])
    p_plain = judge(det, delivered, defense, fake_index=FAKE_INDEX).p_fake[0]
    non_adaptive = float((p_plain < 0.5).float().mean())
    adaptive = attack_and_measure("pgd", det, x, params=params, y=y, defense=defense, generator=g)
    rate = sum(r.success for r in adaptive) / len(adaptive)
    assert rate >= non_adaptive and rate >= 0.8, (rate, non_adaptive)
