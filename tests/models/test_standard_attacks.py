"""APGD-CE, FAB and Square (the two-class standard suite's attacks) on tiny CPU models, and APGD-CE beside
torchattacks' APGD on the demo detector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import checkpoint
from models.attacks import apgd_ce, fab, square
from models.attacks.apgd import checkpoints
from models.attacks.fab import project_linf
from models.attacks.square import window_share
from models.checkpoint import DEMO_CHECKPOINTS
from models.images import load_image_file, quantize_8bit
from tests.models.test_attacks import conv_model, images, linear_model


def ce(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05: w_j = ceil(p_j * 100).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


class ScriptedLoss(nn.Module):
    """Logits ``[0, s_k]`` on its k-th call: the loss follows a script whatever the input, while a tiny term in the
    input's mean gives every pixel a positive gradient. It records the mean pixel of each input it is given."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script, self.seen = script, []  # type: list[float]

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(float(x.detach().mean()))
        s = self.script[len(self.seen) - 1] + 1e-3 * x.flatten(1).mean(dim=1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_apgd_halves_the_step_size_by_the_papers_second_condition_as_autoattack() -> None:
    # The start has the highest loss of the run, and after the first step the loss rises at every step: condition 1
    # (too few raising steps) never fires, and the best loss never improves. Condition 2 (not halved at the last
    # checkpoint, best loss not improved) then fires at every other checkpoint, never at the first (AutoAttack's
    # reduced_last_check starts true). A halving restarts from the best point, the start: the next input shows it.
    steps, eps = 60, 0.25
    marks = checkpoints(steps)
    assert marks[:3] == [14, 25, 35]
    model = ScriptedLoss([20.0] + [-5 + 0.1 * k for k in range(1, steps + 1)])
    x = torch.full((1, 3, 4, 4), 0.5)
    apgd_ce(model, x, torch.zeros(1, dtype=torch.long), eps=eps, steps=steps, random_start=False)
    after = {m: model.seen[m + 1] for m in marks[:3]}  # the input of the step after each checkpoint
    assert after[14] == pytest.approx(0.75)  # no halving at the first checkpoint: it stays at the corner x + eps
    assert after[25] == pytest.approx(0.5 + 0.75 * eps)  # halved to eps: from the start, 0.75 of a step of eps
    assert after[35] > 0.7  # halved at 25, so condition 2 does not fire at 35: no restart


@pytest.mark.parametrize("random_start", [False, True])
def test_apgd_respects_eps_and_never_ends_below_its_start(random_start: bool) -> None:
    model, x = conv_model(), images(6)
    y = labels(model, x)
    eps = 0.03
    start_gen = torch.Generator().manual_seed(3)
    adv = apgd_ce(model, x, y, eps=eps, steps=15, random_start=random_start, generator=start_gen)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    start = x
    if random_start:  # the same draw the attack made
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
        start = torch.min(torch.max(x + (2 * noise - 1) * eps, (x - eps).clamp(min=0)), (x + eps).clamp(max=1))
    fooled = labels(model, adv) != y
    assert bool((fooled | (ce(model, adv, y) >= ce(model, start, y) - 1e-6)).all())
    assert bool((ce(model, adv, y) > ce(model, x, y)).any())  # it moved uphill


def test_apgd_eps_zero_is_the_identity_and_targeted_reaches_the_target() -> None:
    model, x = linear_model(), images(4)
    y = labels(model, x)
    assert torch.equal(apgd_ce(model, x, y, eps=0.0, steps=5), x)
    adv = apgd_ce(model, x, 1 - y, eps=0.5, steps=20, targeted=True)
    assert bool((labels(model, adv) == 1 - y).all())


def test_project_linf_reaches_the_hyperplane_with_the_smallest_move() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 3, 4, 4, generator=g) * 0.5 + 0.25
    w = torch.randn(3, 3, 4, 4, generator=g)
    c = torch.tensor([0.5, -0.3, 0.05])
    d = project_linf(p, w, c)
    torch.testing.assert_close((w * d).flatten(1).sum(1), c, atol=1e-4, rtol=1e-4)
    # Without the box binding, the smallest L-inf solution is |c| / ||w||_1 in every coordinate.
    torch.testing.assert_close(d.flatten(1).abs().amax(1), c.abs() / w.flatten(1).abs().sum(1), atol=1e-4, rtol=1e-3)
    assert bool(((p + d) >= 0).all() and ((p + d) <= 1).all())


def test_fab_finds_a_small_adversarial_on_a_linear_model() -> None:
    """On a linear two-class model the boundary is one hyperplane: FAB's first projection lands on it, so the
    norm it returns is (up to the overshoot eta) the exact minimal L-inf distance |g| / ||w||_1."""
    model, x = linear_model(), images(4) * 0.5 + 0.25  # away from the box edges
    y = labels(model, x)
    layer = model[1]
    wdiff = (layer.weight[0] - layer.weight[1]).detach()
    with torch.no_grad():
        margin = (model(x)[:, 0] - model(x)[:, 1]).abs()
    exact = margin / wdiff.abs().sum()
    adv = fab(model, x, y, eps=1.0, steps=10, round_finish=False)
    assert bool((labels(model, adv) != y).all())
    norm = (adv - x).flatten(1).abs().amax(1)
    assert bool((norm <= exact * 1.06 + 1e-5).all() and (norm >= exact * 0.999).all()), (norm, exact)
    small = fab(model, x, y, eps=float(exact.min()) / 2, steps=10, round_finish=False)
    assert float((small - x).abs().max()) <= float(exact.min()) / 2 + 1e-6  # kept within eps
    assert bool((labels(model, small) == y).all())  # where no adversarial lies within eps


class Boundary(nn.Module):
    """Two classes split by the plane mean(x) = ``level``: logits ``[-g, g]``, ``g = 100 (mean(x) - level)``."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: Tensor) -> Tensor:
        g = 100 * (x.flatten(1).mean(dim=1) - self.level)
        return torch.stack([-g, g], dim=1)


def test_fab_delivers_a_point_that_still_fools_after_8_bit_rounding() -> None:
    # The boundary lies 0.3 of an 8-bit level above an 8-bit image: the minimal adversarial (0.3 level away) rounds
    # back to the image, which the model classifies as before. Scaled out along the same direction, one level does it.
    x = torch.full((2, 3, 4, 4), 128 / 255)
    model, y = Boundary((128 + 0.3) / 255), torch.zeros(2, dtype=torch.long)
    eps = 8 / 255
    minimal = fab(model, x, y, eps=eps, steps=10, round_finish=False)
    assert bool((labels(model, minimal) == 1).all())  # it fools in float
    assert bool((labels(model, quantize_8bit(minimal)) == 0).all())  # but not as a file
    delivered = quantize_8bit(fab(model, x, y, eps=eps, steps=10))
    assert bool((labels(model, delivered) == 1).all())  # scaled out, it fools as a file
    assert float((delivered - x).abs().max()) == pytest.approx(1 / 255)  # the least scaled-out point: one level
    far = Boundary((128 + 20.3) / 255)  # nothing within eps fools: the budget is respected, x + eps at most
    assert float((fab(far, x, y, eps=eps, steps=10) - x).abs().max()) <= eps + 1e-6


def test_square_needs_no_gradients_and_respects_eps() -> None:
    model, x = conv_model(), images(4)
    y = labels(model, x)

    class NoGrad(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: Tensor) -> Tensor:
            assert not torch.is_grad_enabled()  # score-based: it only queries
            return self.inner(z)

    eps = 0.05
    adv = square(NoGrad(model), x, y, eps=eps, queries=60, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        before = model(x)[torch.arange(4), y] - model(x)[torch.arange(4), 1 - y]
        after = model(adv)[torch.arange(4), y] - model(adv)[torch.arange(4), 1 - y]
    assert bool((after < before).all())  # the margin fell on every image
    assert window_share(0.8, 0, 1000) == 0.8 and window_share(0.8, 999, 1000) == pytest.approx(0.8 / 512)


def demo_fakes_called_fake(split: Path, n: int = 24) -> tuple[nn.Module, Tensor, Tensor]:
    """The demo ResNet-18 and up to ``n`` of the first 48 demo test fakes it calls fake (the peers' common ground)."""
    det = checkpoint.load(DEMO_CHECKPOINTS / "demo-resnet18").detector
    x = torch.stack([load_image_file(f) for f in sorted((split / "fake").iterdir())[:48]])
    y = labels(det, x)
    return det, x[y == 0][:n], y[y == 0][:n]


@pytest.mark.slow
def test_apgd_matches_or_beats_torchattacks_on_the_demo_detector(demo_test_split: tuple[Path, object]) -> None:
    """Cross-check against a peer implementation at equal budget (10 steps, one restart, eps 1/255): success on
    demo test fakes the detector calls fake, judged in float as torchattacks returns them."""
    torchattacks = pytest.importorskip("torchattacks")
    det, x, y = demo_fakes_called_fake(demo_test_split[0])
    eps = 1 / 255
    ours = apgd_ce(det, x, y, eps=eps, steps=10, generator=torch.Generator().manual_seed(0))
    theirs = torchattacks.APGD(det, norm="Linf", eps=eps, steps=10, n_restarts=1, loss="ce", seed=0)(x, y)
    ours_rate = float((labels(det, ours) != y).float().mean())
    theirs_rate = float((labels(det, theirs) != y).float().mean())
    assert 0 < theirs_rate < 1  # a budget where the comparison means something
    assert ours_rate >= theirs_rate, (ours_rate, theirs_rate)
