"""Detector architectures: a small registry in the style of torchvision's ``models/_api.py``.

Six entries are registered by name (``resnet18``, ``vgg16_slim``, ...). Any torchvision classification
builder and any timm model are resolved on demand by a prefixed name: ``torchvision:convnext_tiny``,
``timm:legacy_xception``. Every builder uses ``weights=None`` / ``pretrained=False``: nothing is ever
downloaded. Trained weights are checkpoints (``models.checkpoint``), made by ``deepfake-guard train`` or
brought in by ``deepfake-guard import-detector`` (``models.importing``).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import make_layers

from models.detector import CLASS_NAMES, FAKE_INDEX, Detector, SigmoidAdapter
from models.lipschitz import hhrelu_

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: Head sizes a detector may have: 2 logits (softmax) or 1 (sigmoid, adapted by ``SigmoidAdapter``).
LOGITS: tuple[int, int] = (1, 2)
PREFIXES: tuple[str, str] = ("torchvision", "timm")
_TV_LIST = "torchvision.models.list_models(module=torchvision.models)"
_TIMM_LIST = "timm.list_models()"


@dataclass(frozen=True)
class ArchitectureSpec:
    """One registry entry: how to build a backbone with a 1- or 2-logit head and how to feed it.

    ``builder(num_classes)`` returns a randomly initialised network with that many outputs.
    """

    name: str
    builder: Callable[[int], nn.Module]
    input_size: tuple[int, int]
    family: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, str] = field(default=CLASS_NAMES)
    description: str = ""

    def backbone(self, logits: int = 2) -> nn.Module:
        """The network the detector wraps: 2 logits as built, 1 logit inside ``SigmoidAdapter``.

        The adapter puts the sigmoid's class at index 1 (``BCEWithLogitsLoss`` on 0/1 labels), so a
        1-logit backbone's two columns are in its own label order, like a 2-logit one's.
        """
        if logits not in LOGITS:
            raise ValueError(f"logits must be one of {LOGITS}, got {logits!r}")
        net = self.builder(logits)
        return SigmoidAdapter(net, positive_index=1) if logits == 1 else net

    def build(
        self,
        *,
        input_size: tuple[int, int] | None = None,
        logits: int = 2,
        fake_index: int = FAKE_INDEX,
        resize: str = "resize",
        resize_short: int | None = None,
        interpolation: str = "bilinear",
        antialias: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Detector:
        """A freshly initialised detector (no weights loaded); unset options take the entry's defaults."""
        return Detector(
            self.backbone(logits),
            input_size=input_size or self.input_size,
            mean=self.mean if mean is None else mean,
            std=self.std if std is None else std,
            class_names=self.class_names,
            fake_index=fake_index,
            resize=resize,
            resize_short=resize_short,
            interpolation=interpolation,
            antialias=antialias,
        )


_REGISTRY: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    if ":" in spec.name:
        raise ValueError(f"architecture name {spec.name!r} may not contain ':' (reserved for {PREFIXES})")
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ArchitectureSpec:
    """The entry called ``name``: a registered name, ``torchvision:BUILDER`` or ``timm:MODEL``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, inner = name.partition(":")
    if sep and prefix == "torchvision":
        return _torchvision_spec(inner)
    if sep and prefix == "timm":
        return _timm_spec(inner)
    raise ValueError(
        f"unknown architecture {name!r}; choose one of {sorted(_REGISTRY)}, 'torchvision:NAME' (NAME from "
        f"{_TV_LIST}) or 'timm:NAME' (NAME from {_TIMM_LIST})"
    )


def names() -> list[str]:
    """The registered names (``torchvision:`` and ``timm:`` names come from ``library_names``)."""
    return sorted(_REGISTRY)


def library_names(prefix: str) -> list[str]:
    """Every name ``get`` resolves under ``prefix`` (``torchvision`` or ``timm``), prefixed."""
    if prefix == "torchvision":
        return [f"torchvision:{n}" for n in tvm.list_models(module=tvm)]
    if prefix == "timm":
        import timm

        return [f"timm:{n}" for n in timm.list_models()]
    raise ValueError(f"unknown library prefix {prefix!r}; choose one of {PREFIXES}")


def _unknown(library: str, name: str, choices: list[str], how: str) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f" (closest: {close})" if close else ""
    return ValueError(f"unknown {library} model {name!r}{hint}; list the choices with {how}")


@functools.cache
def _torchvision_spec(name: str) -> ArchitectureSpec:
    # Classification builders only: list_models(module=torchvision.models) leaves out detection,
    # segmentation, video and optical-flow models, whose outputs are not class logits.
    choices = tvm.list_models(module=tvm)
    if name not in choices:
        raise _unknown("torchvision", name, choices, _TV_LIST)
    builder = tvm.get_model_builder(name)
    # The weights enum is metadata (preset sizes, no download): its eval crop is the native input size.
    crop = tvm.get_model_weights(name).DEFAULT.transforms.keywords.get("crop_size", 224)

    def build(num_classes: int) -> nn.Module:
        return builder(weights=None, num_classes=num_classes)

    return ArchitectureSpec(
        f"torchvision:{name}",
        build,
        (int(crop), int(crop)),
        builder.__module__.rpartition(".")[2],
        description=f"torchvision {name} (weights=None)",
    )


@functools.cache
def _timm_spec(name: str) -> ArchitectureSpec:
    import timm

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), _TIMM_LIST)
    cfg = timm.get_pretrained_cfg(name)
    size = tuple(cfg.input_size[-2:]) if cfg is not None else (224, 224)
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD

    def build(num_classes: int) -> nn.Module:
        # pretrained=False: timm builds the architecture only and never contacts a model hub.
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return ArchitectureSpec(
        f"timm:{name}",
        build,
        (int(size[0]), int(size[1])),
        timm.models.model_entrypoint(name).__module__.rpartition(".")[2],
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        description=f"timm {name} (pretrained=False)",
    )


def _resnet18(num_classes: int = 2) -> nn.Module:
    return tvm.resnet18(weights=None, num_classes=num_classes)


def _resnet50(num_classes: int = 2) -> nn.Module:
    return tvm.resnet50(weights=None, num_classes=num_classes)


def _resnet18_hhrelu(num_classes: int = 2) -> nn.Module:
    net = _resnet18(num_classes)
    hhrelu_(net)
    return net


def _resnet50_hhrelu(num_classes: int = 2) -> nn.Module:
    net = _resnet50(num_classes)
    hhrelu_(net)
    return net


def _vgg16(num_classes: int = 2) -> nn.Module:
    return tvm.vgg16(weights=None, num_classes=num_classes)


# VGG-16's 13-conv topology at a quarter of the width, with a global-pool head: same family as
# VGG-16 (so black-box transfer between it and a ResNet is meaningful) but 1 M parameters
# instead of 138 M, so the demo detector trains on 2 CPU cores and fits in the repository.
_VGG16_SLIM_CFG: list[str | int] = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128, "M"]


class _SlimVGG(nn.Module):
    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.features = make_layers(_VGG16_SLIM_CFG, batch_norm=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes))

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
