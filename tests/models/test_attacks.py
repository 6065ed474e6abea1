"""Properties of FGSM, PGD and CW-L2 on tiny CPU models."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import models.attacks.cw as cw_module
from models.attacks import ATTACKS, CW_PRESETS, apgd_ce, apgd_ce_l2, cw_l2, fab, fab_l2, fgsm, pgd, square
from models.attacks._common import max_other_logit, true_logit
from models.attacks.cw import cw_objective, cw_success
from models.progress import Cancelled, Progress

SHAPE = (3, 8, 8)
D = 3 * 8 * 8


def linear_model(classes: int = 2, seed: int = 0, bias: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.Linear(D, classes)
    with torch.no_grad():
        layer.bias.fill_(bias)
    return nn.Sequential(nn.Flatten(), layer).eval()


def conv_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 2),
    ).eval()


class MeanModel(nn.Module):
    """Z_0 - Z_1 = scale * (mean(x) - 0.5): the margin of each image is known in closed form."""

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        z = self.scale * (x.flatten(1).mean(dim=1) - 0.5)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def images(n: int = 4, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=g)
    x[:, :, 0, :] = 0.0  # pixels on the box edges, where clamping matters
    x[:, :, -1, :] = 1.0
    return x


def predict(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Z_y - max_{j != y} Z_j: positive while the image is still classified as y."""
    with torch.no_grad():
        z = model(x)
    return true_logit(z, y) - max_other_logit(z, y)


# The default preset's budget with kappa = 0: tiny random models cannot reach its logit margin of 1.
FAST_CW: dict[str, Any] = {**CW_PRESETS["default"], "kappa": 0.0}


def test_registry_names() -> None:
    assert {"fgsm": fgsm, "pgd": pgd, "cw_l2": cw_l2, "apgd_ce": apgd_ce, "apgd_ce_l2": apgd_ce_l2, "fab": fab,
            "fab_l2": fab_l2, "square": square} == ATTACKS  # fmt: skip


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_eps_zero_returns_x_unchanged(attack: str) -> None:
    model, x = conv_model(), images()
    y = predict(model, x)
    kwargs = {"eps": 0.0} if attack == "fgsm" else {"eps": 0.0, "steps": 3, "step_size": 0.01}
    adv = ATTACKS[attack](model, x, y, **kwargs)
    assert torch.equal(adv, x)


def test_fgsm_respects_eps_and_box() -> None:
    model, x = conv_model(), images(8)
    y = predict(model, x)
    adv = fgsm(model, x, y, eps=0.03)
    assert (adv - x).abs().max() <= 0.03 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv != x).any()


def test_fgsm_matches_direct_reference() -> None:
    model, x = conv_model(), images(6)
    y = predict(model, x)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    assert xr.grad is not None
    expected = torch.clamp(x + 0.02 * xr.grad.sign(), 0, 1)
    assert torch.equal(fgsm(model, x, y, eps=0.02), expected)


def test_fgsm_batched_equals_one_by_one() -> None:
    model, x = conv_model(), images(5)
    y = predict(model, x)
    one_by_one = torch.cat([fgsm(model, x[i : i + 1], y[i : i + 1], eps=0.02) for i in range(len(x))])
    assert torch.equal(fgsm(model, x, y, eps=0.02), one_by_one)


def test_attacks_leave_no_parameter_grads_and_restore_mode() -> None:
    model, x = conv_model(), images()
    y = predict(model, x)
    model.train()
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    running_mean = bn.running_mean.clone()
    fgsm(model, x, y, eps=0.02)
    pgd(model, x, y, eps=0.02, steps=2, step_size=0.01)
    cw_l2(model, x, y, **{**FAST_CW, "search_steps": 1, "max_iterations": 3})
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(bn.running_mean, running_mean)  # attacked in eval mode: BN stats untouched


def test_untargeted_attacks_lower_true_class_margin() -> None:
    model, x = conv_model(), images(8)
    y = predict(model, x)
    before = margin(model, x, y)
    for adv in (fgsm(model, x, y, eps=0.02), pgd(model, x, y, eps=0.02, steps=5, step_size=0.005)):
        assert (margin(model, adv, y) < before).all()


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "cw_l2"])
def test_targeted_attacks_raise_target_probability(attack: str) -> None:
    model, x = linear_model(classes=3), images(6)
    target = (predict(model, x) + 1) % 3
    kwargs: dict = {
        "fgsm": {"eps": 0.02},
        "pgd": {"eps": 0.02, "steps": 5, "step_size": 0.005},
        "cw_l2": FAST_CW,
    }[attack]
    adv = ATTACKS[attack](model, x, target, targeted=True, **kwargs)
    adv = adv.adv if attack == "cw_l2" else adv
    with torch.no_grad():
        p_before = model(x).softmax(1).gather(1, target[:, None])
        p_after = model(adv).softmax(1).gather(1, target[:, None])
    assert (p_after > p_before).all()
    if attack == "cw_l2":
        assert (predict(model, adv) == target).all()


def test_pgd_stays_in_eps_ball_and_is_reproducible() -> None:
    model, x = conv_model(), images(6)
    y = predict(model, x)
    kwargs: dict[str, Any] = dict(eps=0.03, steps=7, step_size=0.02)
    runs = [pgd(model, x, y, **kwargs, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - x).abs().max() <= 0.03 + 1e-6
    assert runs[0].min() >= 0 and runs[0].max() <= 1


def test_pgd_beats_fgsm_on_loss() -> None:
    model, x = conv_model(), images(8)
    y = predict(model, x)
    with torch.no_grad():
        loss_fgsm = F.cross_entropy(model(fgsm(model, x, y, eps=0.02)), y)
        loss_pgd = F.cross_entropy(model(pgd(model, x, y, eps=0.02, steps=10, step_size=0.005, random_start=False)), y)
    assert loss_pgd > loss_fgsm


def test_cw_flips_and_lowers_true_class_margin() -> None:
    model, x = conv_model(), images(6)
    y = predict(model, x)
    result = cw_l2(model, x, y, **FAST_CW, generator=torch.Generator().manual_seed(0))
    assert result.success.all()
    assert (predict(model, result.adv) != y).all()
    assert (margin(model, result.adv, y) < margin(model, x, y)).all()
    assert torch.allclose(result.l2, (result.adv - x).flatten(1).norm(dim=1))
    assert result.adv.min() >= 0 and result.adv.max() <= 1
    assert result.adv.shape == x.shape and result.iterations.shape == (6,) and result.c.shape == (6,)


def test_masking_helper_is_correct_when_all_logits_are_negative() -> None:
    z = torch.tensor([[-5.0, -3.0, -9.0], [-1.0, -2.0, -0.5]])
    y = torch.tensor([0, 2])
    assert torch.equal(max_other_logit(z, y), torch.tensor([-3.0, -1.0]))
    # The one-hot-multiply idiom (torchattacks' f) reads 0 for "the best other logit" here.
    buggy = ((1 - F.one_hot(y, 3)) * z).max(dim=1).values
    assert torch.equal(buggy, torch.tensor([0.0, 0.0]))


def test_cw_succeeds_when_all_logits_are_negative() -> None:
    model, x = linear_model(bias=-100.0), images(4)
    y = predict(model, x)
    with torch.no_grad():
        assert (model(x) < 0).all()
    # With the masking bug, f = max(Z_y*onehot) - max((1-onehot)*Z) = 0 - 0: no gradient, CW cannot move.
    xr = x.clone().requires_grad_(True)
    z = model(xr)
    onehot = F.one_hot(y, 2).float()
    buggy_f = ((onehot * z).max(1).values - ((1 - onehot) * z).max(1).values).clamp(min=0).sum()
    (buggy_grad,) = torch.autograd.grad(buggy_f, xr)
    assert torch.equal(buggy_grad, torch.zeros_like(x))
    (grad,) = torch.autograd.grad(cw_objective(model(xr), y, kappa=0.0, targeted=False).sum(), xr)
    assert grad.abs().sum() > 0
    result = cw_l2(model, x, y, **FAST_CW)
    assert result.success.all()
    assert (predict(model, result.adv) != y).all()


def test_cw_mixed_batch_reports_unflippable_sample_failed_and_unchanged() -> None:
    model = MeanModel()
    # Margins 0.01 (flips with c = 1) and 4.5 (needs the mean to fall by 0.45: c > 17 in closed form).
    x = torch.stack([torch.full(SHAPE, 0.501), torch.full(SHAPE, 0.95)])
    y = torch.zeros(2, dtype=torch.long)
    result = cw_l2(model, x, y, kappa=0.0, c_init=1.0, c_max=1.0, search_steps=3, max_iterations=100, lr=0.05)
    assert result.success.tolist() == [True, False]
    assert torch.equal(result.adv[1], x[1])
    assert result.l2[1] == 0 and result.l2[0] > 0
    assert result.c[1] == 1.0
    assert predict(model, result.adv[:1]).item() == 1
    # Raising the cap lets the per-sample search escalate c by x10 for the hard sample only.
    result = cw_l2(model, x, y, kappa=0.0, c_init=1.0, c_max=1e3, search_steps=4, max_iterations=100, lr=0.05)
    assert result.success.all()
    assert result.c[0] <= 1.0 and result.c[1] >= 10.0


def test_cw_bisects_after_first_success() -> None:
    model = MeanModel()
    x = torch.full((1, *SHAPE), 0.51)
    y = torch.zeros(1, dtype=torch.long)
    one = cw_l2(model, x, y, kappa=0.0, c_init=10.0, search_steps=1, max_iterations=100, lr=0.05)
    more = cw_l2(model, x, y, kappa=0.0, c_init=10.0, search_steps=4, max_iterations=100, lr=0.05)
    assert one.success.all() and more.success.all()
    assert more.c.item() < 10.0  # the best image came from a bisected, smaller c
    assert more.l2.item() < one.l2.item()


def test_cw_kappa_is_a_logit_margin() -> None:
    model, x = linear_model(), images(4)
    y = predict(model, x)
    result = cw_l2(model, x, y, **{**FAST_CW, "kappa": 0.5, "c_init": 10.0})
    assert result.success.all()
    assert (margin(model, result.adv, y) < -0.5).all()
    assert cw_success(torch.tensor([[1.0, 1.4]]), torch.tensor([0]), kappa=0.5, targeted=False).tolist() == [False]
    assert cw_success(torch.tensor([[1.0, 1.6]]), torch.tensor([0]), kappa=0.5, targeted=False).tolist() == [True]


def test_cw_uses_a_fresh_adam_and_modifier_each_search_step(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.optim.Adam] = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(params, **kwargs)
            made.append(self)

    monkeypatch.setattr(cw_module, "Adam", RecordingAdam)
    model, x = conv_model(), images(3)
    cw_l2(model, x, predict(model, x), **{**FAST_CW, "search_steps": 3, "max_iterations": 5})
    assert len(made) == 3
    modifiers = [opt.param_groups[0]["params"][0] for opt in made]
    assert len({id(m) for m in modifiers}) == 3
    # Each optimiser only ever saw its own search step: its step count is that step's iterations.
    assert all(opt.state[m]["step"].item() <= 5 for opt, m in zip(made, modifiers, strict=True))


def test_cw_early_abort_is_per_sample() -> None:
    model = MeanModel()
    x = torch.stack([torch.full(SHAPE, 0.501), torch.full(SHAPE, 0.8)])
    y = torch.zeros(2, dtype=torch.long)
    kwargs: dict[str, Any] = dict(kappa=0.0, c_init=100.0, search_steps=2, max_iterations=200, lr=0.05)
    full = cw_l2(model, x, y, **kwargs, abort_early=False)
    assert full.iterations.tolist() == [400, 400]
    early = cw_l2(model, x, y, **kwargs)
    assert (early.iterations < 400).all()
    assert early.iterations[0] != early.iterations[1]
    assert early.success.all()


def test_cw_reports_progress_and_can_be_cancelled() -> None:
    model, x = conv_model(), images(2)
    y = predict(model, x)
    seen: list[Progress] = []
    budget = {"search_steps": 2, "max_iterations": 20, "abort_early": False}
    cw_l2(model, x, y, **{**FAST_CW, **budget}, progress=seen.append)
    assert [p.iteration for p in seen] == list(range(2, 41, 2))
    assert all(p.max_iterations == 40 and math.isfinite(p.loss) for p in seen)
    with pytest.raises(Cancelled):
        cw_l2(model, x, y, **FAST_CW, should_stop=lambda: True)


def test_pgd_reports_progress_and_can_be_cancelled() -> None:
    model, x = conv_model(), images(2)
    y = predict(model, x)
    seen: list[Progress] = []
    quiet = pgd(model, x, y, eps=0.02, steps=25, step_size=0.005, generator=torch.Generator().manual_seed(0))
    adv = pgd(
        model,
        x,
        y,
        eps=0.02,
        steps=25,
        step_size=0.005,
        progress=seen.append,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(adv, quiet)  # listening changes nothing
    assert [p.iteration for p in seen] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]
    assert all(p.max_iterations == 25 and p.stage == "pgd" and math.isfinite(p.loss) for p in seen)
    # The loss reported is the mean cross-entropy of the image the step started from.
    assert seen[0].loss > 0
    calls: list[int] = []

    def stop_on_third_poll() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Cancelled) as info:
        pgd(model, x, y, eps=0.02, steps=1000, step_size=0.005, should_stop=stop_on_third_poll)
    assert info.value.iteration == 30  # polled every 10 steps: it stopped within 10 steps of the request


@pytest.mark.parametrize(
    ("attack", "kwargs", "named"),
    [
        ("fgsm", {"eps": -0.1}, "-0.1"),
        ("fgsm", {"eps": float("inf")}, "eps must be a finite number"),
        ("pgd", {"eps": 0.1, "steps": 3, "step_size": float("nan")}, "step_size must be a finite number"),
        ("cw_l2", {**FAST_CW, "kappa": float("inf")}, "kappa must be a finite number"),
        ("cw_l2", {**FAST_CW, "kappa": 1e308}, "kappa"),
        ("cw_l2", {**FAST_CW, "c_init": 1e308, "c_max": 1e308}, "c_init"),
        ("cw_l2", {**FAST_CW, "c_init": float("inf")}, "^c_init"),
        ("cw_l2", {**FAST_CW, "c_max": float("inf")}, "^c_max"),
        ("fgsm", {"eps": 2.0}, "2.0"),
        ("fgsm", {"eps": float("nan")}, "nan"),
        ("pgd", {"eps": 0.1, "steps": 0, "step_size": 0.01}, "steps"),
        ("pgd", {"eps": 0.1, "steps": 3, "step_size": 0.0}, "step_size"),
        ("cw_l2", {**FAST_CW, "c_init": 0.0}, "c_init"),
        ("cw_l2", {**FAST_CW, "c_max": 0.5}, "c_max"),
        ("cw_l2", {**FAST_CW, "kappa": -1.0}, "kappa"),
        ("cw_l2", {**FAST_CW, "lr": 0.0}, "lr"),
        ("cw_l2", {**FAST_CW, "search_steps": 0}, "search_steps"),
        ("cw_l2", {**FAST_CW, "max_iterations": 2.5}, "2.5"),
    ],
)
def test_invalid_parameters_raise_value_error(attack: str, kwargs: dict, named: str) -> None:
    model, x = conv_model(), images(2)
    with pytest.raises(ValueError, match=named):
        ATTACKS[attack](model, x, predict(model, x), **kwargs)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "cw_l2"])
def test_invalid_inputs_raise_value_error(attack: str) -> None:
    model, x = conv_model(), images(2)
    kwargs = {"fgsm": {"eps": 0.1}, "pgd": {"eps": 0.1, "steps": 1, "step_size": 0.1}, "cw_l2": FAST_CW}[attack]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ATTACKS[attack](model, x * 2, predict(model, x), **kwargs)
    with pytest.raises(ValueError, match="one integer label"):
        ATTACKS[attack](model, x, torch.zeros(3, dtype=torch.long), **kwargs)
