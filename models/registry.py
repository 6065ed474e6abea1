"""Detector architectures: a small registry in the style of torchvision's ``models/_api.py``.

Every builder uses ``weights=None``: nothing is downloaded. Trained weights are the project's own
checkpoints (see ``models.checkpoint``), made by ``deepfake-guard train``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import make_layers

from models.detector import CLASS_NAMES, Detector
from models.lipschitz import hhrelu_

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchitectureSpec:
    """One registry entry: how to build a 2-logit backbone and how to feed it."""

    name: str
    builder: Callable[[], nn.Module]
    input_size: tuple[int, int]
    family: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, str] = field(default=CLASS_NAMES)
    description: str = ""

    def build(self, *, input_size: tuple[int, int] | None = None) -> Detector:
        """A freshly initialised detector (no weights loaded)."""
        return Detector(
            self.builder(),
            input_size=input_size or self.input_size,
            mean=self.mean,
            std=self.std,
            class_names=self.class_names,
        )


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ArchitectureSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(_REGISTRY)}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def _resnet18() -> nn.Module:
    return tvm.resnet18(weights=None, num_classes=2)


def _resnet50() -> nn.Module:
    return tvm.resnet50(weights=None, num_classes=2)


def _resnet18_hhrelu() -> nn.Module:
    net = _resnet18()
    hhrelu_(net)
    return net


def _resnet50_hhrelu() -> nn.Module:
    net = _resnet50()
    hhrelu_(net)
    return net


def _vgg16() -> nn.Module:
    return tvm.vgg16(weights=None, num_classes=2)


# VGG-16's 13-conv topology at a quarter of the width, with a global-pool head: same family as
# VGG-16 (so black-box transfer between it and a ResNet is meaningful) but 1 M parameters
# instead of 138 M, so the demo detector trains on 2 CPU cores and fits in the repository.
_VGG16_SLIM_CFG: list[str | int] = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128, "M"]


class _SlimVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = make_layers(_VGG16_SLIM_CFG, batch_norm=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 2))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.classifier(self.pool(self.features(x)))


register(ArchitectureSpec("resnet18", _resnet18, (224, 224), "resnet", description="torchvision ResNet-18"))
register(ArchitectureSpec("resnet50", _resnet50, (224, 224), "resnet", description="torchvision ResNet-50"))
# The paper's smooth-activation ResNets for Lipschitz training (models/lipschitz.py): same weights, HHReLU.
register(
    ArchitectureSpec(
        "resnet18_hhrelu", _resnet18_hhrelu, (224, 224), "resnet", description="ResNet-18 with HHReLU (d = 0.5)"
    )
)
register(
    ArchitectureSpec(
        "resnet50_hhrelu", _resnet50_hhrelu, (224, 224), "resnet", description="ResNet-50 with HHReLU (d = 0.5)"
    )
)
register(ArchitectureSpec("vgg16", _vgg16, (224, 224), "vgg", description="torchvision VGG-16"))
register(
    ArchitectureSpec(
        "vgg16_slim",
        _SlimVGG,
        (224, 224),
        "vgg",
        description="VGG-16 conv topology (13 convs, BatchNorm) at 1/4 width with a global-pool head",
    )
)
