"""Lipschitz regularisation: HHReLU, the input-gradient penalty and its double backprop, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from models import checkpoint, registry
from models.checkpoint import CheckpointMeta
from models.detector import Detector
from models.lipschitz import HHReLU, hhrelu, hhrelu_, input_gradient_norm, lipschitz_penalty
from models.training import TrainConfig, train_detector


def test_hhrelu_values_match_the_definition() -> None:
    d = 0.5
    x = torch.tensor([-2.0, -1e-3, 0.0, 0.1, 0.25, 0.5, 0.7, 3.0])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.01, 0.0625, 0.25, 0.45, 2.75])  # x^2/(2d) up to d, then x - d/2
    assert torch.allclose(hhrelu(x, d), expected)
    assert torch.allclose(HHReLU(d)(x), expected)


@pytest.mark.parametrize("knot", [0.0, 0.5])
def test_hhrelu_value_and_slope_are_continuous_at_the_knots(knot: float) -> None:
    h = 1e-4
    x = torch.tensor([knot - h, knot, knot + h], dtype=torch.float64, requires_grad=True)
    y = hhrelu(x, 0.5)
    (slope,) = torch.autograd.grad(y.sum(), x)
    y = y.detach()
    assert abs(float(y[2] - y[0])) < 2e-4  # no jump in value
    assert abs(float(slope[2] - slope[0])) < 1e-3  # nor in slope (ReLU jumps by 1 at 0)
    # Second derivative: 1/d inside (0, d), 0 outside: the curvature the penalty needs.
    z = torch.tensor([0.25, 1.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(hhrelu(z, 0.5).sum(), z, create_graph=True)
    (g2,) = torch.autograd.grad(g.sum(), z)
    assert torch.allclose(g2, torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_hhrelu_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="-1"):
        HHReLU(-1.0)


def test_penalty_on_a_linear_model_is_the_mean_squared_weight() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3 * 4 * 4, 2)
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(5, 3, 4, 4, requires_grad=True)
    penalty = lipschitz_penalty(x, model(x))
    # dZ_k/dx = W_k for every image: the mean over k, batch and pixels of W^2 is the mean of W^2.
    assert float(penalty.detach()) == pytest.approx(float(lin.weight.detach().pow(2).mean()), rel=1e-6)
    assert input_gradient_norm(model, x.detach()) == pytest.approx(float(penalty.detach()), rel=1e-6)


def test_penalty_has_a_gradient_wrt_the_weights() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(12, 2)
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(4, 3, 2, 2, requires_grad=True)
    lipschitz_penalty(x, model(x)).backward()
    # d/dW of mean(W^2) = 2 W / numel(W): double backprop reaches the weights through the input gradient.
    assert lin.weight.grad is not None
    assert torch.allclose(lin.weight.grad, 2 * lin.weight.detach() / lin.weight.numel(), atol=1e-7)


def test_penalty_needs_x_to_require_grad() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.rand(2, 3, 2, 2)
    with pytest.raises(ValueError, match="requires_grad"):
        lipschitz_penalty(x, model(x))


def test_hhrelu_swap_covers_every_resnet_activation() -> None:
    det = registry.get("resnet18").build(input_size=(32, 32))
    n = hhrelu_(det)
    assert n == 9  # the stem's ReLU and one shared ReLU module per BasicBlock (8 blocks)
    assert not any(type(m) is nn.ReLU for m in det.modules())
    with pytest.raises(ValueError, match=r"no nn\.ReLU"):
        hhrelu_(det)


def test_hhrelu_resnet_penalty_backprops_to_the_first_conv() -> None:
    det = registry.get("resnet18_hhrelu").build(input_size=(32, 32)).train()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    lipschitz_penalty(x, det(x)).backward()
    grad = det.backbone.conv1.weight.grad  # type: ignore[union-attr]
    assert grad is not None and float(grad.abs().sum()) > 0


def test_hhrelu_checkpoint_round_trip(tmp_path: Path) -> None:
    spec = registry.get("resnet18_hhrelu")
    torch.manual_seed(0)
    det = spec.build(input_size=(32, 32)).eval()
    meta = CheckpointMeta(architecture=spec.name, input_size=(32, 32), mean=spec.mean, std=spec.std)
    checkpoint.save(det, tmp_path / "smooth", meta)
    loaded = checkpoint.load(tmp_path / "smooth")
    assert any(isinstance(m, HHReLU) for m in loaded.detector.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.detector(x), det(x), atol=1e-6)


def _tiny_detector() -> Detector:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), HHReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 2)
    )
    return Detector(backbone, input_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_training_with_the_penalty_lowers_the_input_gradient() -> None:
    """Same data, seed and schedule: lambda > 0 must end with a smaller mean (dZ/dx)^2 than lambda = 0."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = (torch.rand(64, 3, 16, 16, generator=g) * 0.6 + 0.2 * y.view(-1, 1, 1, 1)).clamp(0, 1)
    data = TensorDataset(x, y)
    norms, penalties = {}, {}
    for lam in (0.0, 3000.0):
        config = TrainConfig(epochs=3, lr=1e-2, batch_size=16, seed=0, lipschitz_lambda=lam)
        result = train_detector(_tiny_detector(), data, None, config, evaluate_fn=lambda d: {"accuracy": 0.0})
        norms[lam] = input_gradient_norm(result.detector, x)
        penalties[lam] = result.history[-1].train_penalty
    assert penalties[0.0] == 0.0 and penalties[3000.0] > 0
    assert norms[3000.0] < 0.5 * norms[0.0], norms


def test_train_config_rejects_a_negative_lambda() -> None:
    with pytest.raises(ValueError, match="-1"):
        TrainConfig(lipschitz_lambda=-1.0)
