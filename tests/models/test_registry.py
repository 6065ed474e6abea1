from __future__ import annotations

import pytest
import torch
from torch import nn

from models import registry
from models.detector import FAKE_INDEX, Detector, SigmoidAdapter


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_builds_without_weights_and_returns_two_logits(name: str) -> None:
    det = registry.get(name).build(input_size=(64, 64)).eval()
    for h, w in [(64, 64), (37, 91), (120, 80)]:
        with torch.no_grad():
            out = det(torch.rand(2, 3, h, w))
        assert out.shape == (2, 2), (name, h, w)
        assert torch.isfinite(out).all()


def test_registry_lists_the_required_architectures() -> None:
    assert {"resnet18", "resnet50", "vgg16"} <= set(registry.names())
    assert registry.get("vgg16").family == "vgg" and registry.get("resnet50").family == "resnet"


def test_unknown_name_names_value_and_choices() -> None:
    with pytest.raises(ValueError, match=r"'resnet9000'.*resnet18"):
        registry.get("resnet9000")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("resnet18"))


def test_resizing_and_normalisation_live_inside_and_are_differentiable() -> None:
    det = registry.get("vgg16_slim").build(input_size=(32, 32)).eval()
    x = torch.rand(1, 3, 50, 70, requires_grad=True)
    det(x)[0, FAKE_INDEX].backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_p_fake_is_softmax_of_index_zero() -> None:
    det = registry.get("vgg16_slim").build(input_size=(32, 32)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(det(x), 1)[:, 0]
    assert torch.allclose(det.p_fake(x), expected)


class _OneLogit(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1) * 10 - 5


@pytest.mark.parametrize("positive", [0, 1])
def test_sigmoid_adapter_matches_sigmoid(positive: int) -> None:
    adapter = SigmoidAdapter(_OneLogit(), positive_index=positive)
    x = torch.rand(4, 3, 8, 8)
    z = _OneLogit()(x).squeeze(1)
    p = torch.softmax(adapter(x), dim=1)[:, positive]
    assert torch.allclose(p, torch.sigmoid(z), atol=1e-6)


def test_detector_rejects_bad_shapes_and_class_orders() -> None:
    det = registry.get("vgg16_slim").build(input_size=(32, 32))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        det(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="class_names"):
        Detector(nn.Identity(), input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), class_names=("real", "fake"))
