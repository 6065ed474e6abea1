"""Cross-checks against torchattacks, the peer library (a dev dependency): same FGSM, a CW-L2 at least as
strong at the same iteration budget. Uses the demo detector when its checkpoint exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attacks import cw_l2, fgsm
from models.checkpoint import DEMO_CHECKPOINTS

torchattacks = pytest.importorskip("torchattacks")

pytestmark = pytest.mark.slow

DEMO = DEMO_CHECKPOINTS / "demo-resnet18.safetensors"


def synthetic_batch(n: int, g: torch.Generator, size: int = 16) -> tuple[Tensor, Tensor]:
    """Smooth images ("real", 1) and the same with a faint checkerboard ("fake", 0): a learnable artefact."""
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)
    y = torch.randint(0, 2, (n,), generator=g)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((ii + jj) % 2).float() * 0.1 - 0.05
    x = (base * 0.8 + 0.1 + (y == 0).float()[:, None, None, None] * checker).clamp(0, 1)
    return x, y


def trained_tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        x, y = synthetic_batch(32, g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


class Scaled(nn.Module):
    """The same classifier with logits times ``k``: a less (k < 1) or more confident detector."""

    def __init__(self, inner: nn.Module, k: float) -> None:
        super().__init__()
        self.inner, self.k = inner, k

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * self.k


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, Tensor]:
    return trained_tiny_model(), synthetic_batch(12, torch.Generator().manual_seed(1))[0]


def labels(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def fooled(model: nn.Module, adv: Tensor, y: Tensor) -> Tensor:
    return labels(model, adv) != y


def l2(adv: Tensor, x: Tensor) -> Tensor:
    return (adv - x).flatten(1).norm(dim=1)


def ours_and_theirs(model: nn.Module, x: Tensor, y: Tensor, search_steps: int, max_iterations: int) -> tuple:
    """Our CW-L2 and torchattacks.CW (c = 1, its documented setting) at the same iteration budget."""
    theirs = torchattacks.CW(model, c=1.0, kappa=0, steps=search_steps * max_iterations, lr=0.01)(x, y)
    ours = cw_l2(
        model, x, y, kappa=0.0, c_init=1.0, search_steps=search_steps, max_iterations=max_iterations, lr=0.01,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert (ours.iterations <= search_steps * max_iterations).all()
    assert torch.equal(fooled(model, ours.adv, y), ours.success)
    return ours, theirs


def test_fgsm_equals_torchattacks(tiny: tuple[nn.Module, Tensor]) -> None:
    cases = [tiny]
    if DEMO.exists():
        from models import checkpoint

        det = checkpoint.load(DEMO).detector
        cases.append((det, torch.rand(4, 3, *det.input_size, generator=torch.Generator().manual_seed(2))))
    for model, x in cases:
        y = labels(model, x)
        theirs = torchattacks.FGSM(model, eps=0.02)(x, y)
        assert torch.allclose(fgsm(model, x, y, eps=0.02), theirs, atol=1e-6, rtol=0)


def test_cw_search_succeeds_where_a_fixed_c_fails(tiny: tuple[nn.Module, Tensor]) -> None:
    # A low-confidence detector (logits / 5): c = 1 is too weak, the binary search raises c per image.
    model, x = Scaled(tiny[0], 0.2), tiny[1]
    y = labels(model, x)
    ours, theirs = ours_and_theirs(model, x, y, search_steps=5, max_iterations=40)
    assert ours.success.all()
    assert fooled(model, theirs, y).sum() < ours.success.sum()
    assert (ours.c > 1.0).any()


def test_cw_l2_no_larger_than_torchattacks_when_c_fits(tiny: tuple[nn.Module, Tensor]) -> None:
    # Where c = 1 suits the model both converge to the decision boundary. At equal budget torchattacks spends
    # all iterations at one c while we restart Adam per search step (as Carlini's reference does), so the
    # medians agree to optimisation noise: allow 1 %.
    model, x = Scaled(tiny[0], 5.0), tiny[1]
    y = labels(model, x)
    ours, theirs = ours_and_theirs(model, x, y, search_steps=5, max_iterations=100)
    ok_theirs = fooled(model, theirs, y)
    assert ours.success.sum() >= ok_theirs.sum()
    both = ours.success & ok_theirs
    assert both.sum() >= len(x) // 2
    assert l2(ours.adv, x)[both].median() <= 1.01 * l2(theirs, x)[both].median()


@pytest.mark.slow
def test_cw_on_the_demo_detector_beats_torchattacks_at_equal_budget(
    demo_test_split: tuple[Path, dict[str, str]],
) -> None:
    """Issue 4's cross-check: demo detector, demo test fakes, same iteration budget (5 x 100 = 500 steps)."""
    from models import checkpoint
    from models.data.folder import load_image_folder
    from models.fitting import Fitting

    det = checkpoint.load(DEMO).detector
    data = load_image_folder(demo_test_split[0], fitting=Fitting((64, 64)))
    x = data.images[data.labels == 0][:16]
    y = labels(det, x)
    x, y = x[y == 0], y[y == 0]  # fakes the detector catches
    ours, theirs = ours_and_theirs(det, x, y, search_steps=5, max_iterations=100)
    ok_theirs = fooled(det, theirs, y)
    assert ours.success.sum() >= ok_theirs.sum()
    both = ours.success & ok_theirs
    if both.any():
        assert l2(ours.adv, x)[both].median() <= l2(theirs, x)[both].median()
