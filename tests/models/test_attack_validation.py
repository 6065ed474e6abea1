"""Attack parameters are checked by type and range before any work, in one place (models/methods.py): what an
attack cannot mean is refused with a ValueError naming the parameter and the value, and the model is left in
the mode each of its modules had."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.attacks import ATTACKS, cw_l2, fgsm, pgd

FAST_CW: dict[str, Any] = dict(kappa=0.0, c_init=1.0, search_steps=1, max_iterations=5, lr=0.01)
KWARGS: dict[str, dict[str, Any]] = {
    "fgsm": {"eps": 0.05},
    "pgd": {"eps": 0.05, "steps": 2, "step_size": 0.02, "random_start": False},
    "cw_l2": FAST_CW,
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()  # fmt: skip


def images(n: int = 3) -> Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def run(name: str, x: Tensor, y: Tensor, **extra: Any) -> Tensor:
    out = ATTACKS[name](model(), x, y, **{**KWARGS[name], **extra})
    return out.adv if name == "cw_l2" else out


@pytest.mark.parametrize("flag", ["targeted", "abort_early"])
@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None])
def test_booleans_must_be_booleans(flag: str, value: Any) -> None:
    """`targeted="no"` ran a *targeted* CW attack towards the true label and reported it a success."""
    with pytest.raises(ValueError, match=rf"^{flag} (must be a boolean .*got {value!r}|is required, got None)"):
        cw_l2(model(), images(), torch.zeros(3, dtype=torch.long), **FAST_CW, **{flag: value})
    if flag == "targeted":
        with pytest.raises(ValueError, match=r"^targeted (must be a boolean|is required)"):
            fgsm(model(), images(), torch.zeros(3, dtype=torch.long), eps=0.1, targeted=value)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw_l2"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused(name: str, bad: float) -> None:
    x = images()
    x[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        run(name, x, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw_l2"])
def test_labels_are_class_indices_of_any_integer_dtype(name: str) -> None:
    x = images()
    y = torch.tensor([0, 1, 0])
    reference = run(name, x, y)
    for dtype in (torch.int32, torch.uint8, torch.int16):
        assert torch.equal(run(name, x, y.to(dtype)), reference), dtype
    with pytest.raises(ValueError, match="class index 2 but the model has 2 classes"):
        run(name, x, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"indices >= 0, got -1"):
        run(name, x, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="one integer label"):
        run(name, x, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="one integer label"):
        run(name, x, torch.tensor([0.0, 1.0, 0.0]))


def test_numpy_scalars_are_numbers() -> None:
    x, y = images(), torch.tensor([0, 1, 0])
    assert torch.equal(fgsm(model(), x, y, eps=np.float32(0.05)), fgsm(model(), x, y, eps=0.05))
    steps = {"eps": np.float64(0.05), "steps": np.int64(2), "step_size": np.float32(0.02), "random_start": False}
    assert torch.equal(pgd(model(), x, y, **steps), run("pgd", x, y))
    cw = {**FAST_CW, "kappa": np.float32(0.0), "search_steps": np.int64(1), "targeted": np.bool_(False)}
    torch.manual_seed(5)
    theirs = cw_l2(model(), x, y, **cw).adv
    torch.manual_seed(5)
    assert torch.equal(theirs, cw_l2(model(), x, y, **FAST_CW).adv)
    with pytest.raises(ValueError, match=r"^search_steps must be an integer"):
        cw_l2(model(), x, y, **{**FAST_CW, "search_steps": np.float32(1.0)})


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        ("cw_l2", {"lr": 1e30}, r"^lr must be a finite number in \(0, 10\], got 1e\+30"),
        ("pgd", {"step_size": 5.0}, r"^step_size must be a finite number in \(0, 1\]"),
        ("pgd", {"steps": 10**9}, r"^steps must be an integer in \[1, 10000\]"),
        ("cw_l2", {"max_iterations": True}, r"^max_iterations must be an integer"),
        ("fgsm", {"eps": "0.1"}, r"^eps must be a finite number in \[0, 1\], got '0.1'"),
    ],
)
def test_meaningless_values_are_refused_before_any_work(name: str, change: dict[str, Any], needle: str) -> None:
    calls = []
    net = model()
    net.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=needle):
        ATTACKS[name](net, images(), torch.zeros(3, dtype=torch.long), **{**KWARGS[name], **change})
    assert calls == []  # refused before the first forward pass


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw_l2"])
def test_every_module_keeps_its_own_mode(name: str) -> None:
    """A wrapper in training mode around an eval-mode detector: `model.train(was_training)` left the detector's
    BatchNorm and Dropout training after the attack."""
    inner = model()
    wrapper = Wrapper(inner).train()
    inner.eval()
    before = {n: m.training for n, m in wrapper.named_modules()}
    out = ATTACKS[name](wrapper, images(), torch.zeros(3, dtype=torch.long), **KWARGS[name])
    assert out is not None
    assert {n: m.training for n, m in wrapper.named_modules()} == before
    assert wrapper.training and not inner[1].training and not inner[3].training
