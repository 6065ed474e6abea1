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


def test_library_names_resolve_on_demand_with_their_own_defaults() -> None:
    spec = registry.get("torchvision:efficientnet_b4")
    assert spec.input_size == (380, 380) and spec.family == "efficientnet"  # from the weights' metadata
    xception = registry.get("timm:legacy_xception")
    assert xception.input_size == (299, 299) and xception.mean == (0.5, 0.5, 0.5)
    assert registry.get("timm:legacy_xception") is xception  # resolved once
    assert "torchvision:convnext_tiny" in registry.library_names("torchvision")
    assert "timm:tf_efficientnet_b4" in registry.library_names("timm")
    assert registry.names() == sorted(["resnet18", "resnet50", "resnet18_hhrelu", "resnet50_hhrelu", "vgg16",
                                       "vgg16_slim"])  # fmt: skip


@pytest.mark.parametrize("logits", [1, 2])
def test_library_heads_are_sized_to_the_logits(logits: int) -> None:
    for name in ("torchvision:mobilenet_v3_small", "timm:resnet10t"):
        net = registry.get(name).builder(logits).eval()
        with torch.no_grad():
            assert net(torch.rand(2, 3, 32, 32)).shape == (2, logits), name
        det = registry.get(name).build(input_size=(32, 32), logits=logits)
        assert det(torch.rand(2, 3, 40, 50)).shape == (2, 2)


def test_unknown_library_names_name_the_value_and_how_to_list() -> None:
    with pytest.raises(ValueError, match=r"unknown torchvision model 'resnet51'.*resnet50.*list_models"):
        registry.get("torchvision:resnet51")
    with pytest.raises(ValueError, match=r"unknown timm model 'xceptionnn'.*timm.list_models"):
        registry.get("timm:xceptionnn")
    with pytest.raises(ValueError, match=r"unknown architecture 'hub:resnet50'.*'torchvision:NAME'.*'timm:NAME'"):
        registry.get("hub:resnet50")
    with pytest.raises(ValueError, match="reserved"):
        registry.register(registry.ArchitectureSpec("a:b", lambda n: nn.Identity(), (8, 8), "x"))
    with pytest.raises(ValueError, match="logits must be one of"):
        registry.get("resnet18").backbone(3)


def test_fake_index_one_is_canonicalised_to_fake_first() -> None:
    torch.manual_seed(0)
    net = registry.get("vgg16_slim").builder(2).eval()
    det = Detector(net, input_size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), fake_index=1).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        raw = net(x)
        assert torch.allclose(det.p_fake(x), torch.softmax(raw, 1)[:, 1])
        assert torch.equal(det(x), raw.flip(1)) and torch.equal(det.classify(x), raw.flip(1))
    with pytest.raises(ValueError, match="fake_index must be 0 or 1, got 2"):
        Detector(net, input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), fake_index=2)


def test_center_crop_keeps_the_aspect_and_takes_the_middle() -> None:
    from models.detector import fit_image

    # A 20 x 40 image whose middle 20 x 20 is 1 and sides 0: the crop to 10 x 10 sees only the middle.
    x = torch.zeros(1, 3, 20, 40)
    x[..., 10:30] = 1
    out = fit_image(x, (10, 10), "center-crop")
    assert out.shape == (1, 3, 10, 10) and torch.equal(out[..., 1:-1], torch.ones_like(out[..., 1:-1]))
    assert out.min() > 0.8  # the antialiasing filter reaches one pixel past the middle at the edges
    assert fit_image(x, (10, 10), "resize").mean() < 0.6  # plain resize squeezes the dark sides in
    assert torch.equal(fit_image(x, (20, 40), "center-crop"), x)  # already at size: untouched
    tall = fit_image(torch.rand(1, 3, 90, 30), (24, 32), "center-crop")
    assert tall.shape == (1, 3, 24, 32)
    det = Detector(nn.Flatten(), input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resize="center-crop")
    y = torch.rand(1, 3, 16, 30, requires_grad=True)
    det.preprocess(y).sum().backward()
    assert y.grad is not None and y.grad[..., :3].abs().sum() == 0 and y.grad[..., 8:22].abs().sum() > 0
    with pytest.raises(ValueError, match="resize must be one of"):
        Detector(nn.Flatten(), input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resize="crop")


def test_building_library_models_opens_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("torchvision:squeezenet1_1", "timm:mobilenetv3_small_050"):
        registry._timm_spec.cache_clear()
        registry._torchvision_spec.cache_clear()
        registry.get(name).build(input_size=(32, 32))
