"""The detector module: a backbone wrapped so that it takes images in pixel units.

Resizing to the backbone's input size and mean/std normalisation happen here, differentiably,
so attacks and purifiers work on the user's image at its own resolution in [0, 1].

Every caller sees logits ordered ``CLASS_NAMES`` (fake first), whatever order the backbone was trained
with: a backbone whose fake class is at index 1 (``fake_index=1``, common outside this project) has its
logits permuted here, so attacks, scoring, training and evaluation stay correct without knowing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Class order used by every detector: ImageFolder sorts ``fake`` before ``real`` (as in the paper).
CLASS_NAMES: tuple[str, str] = ("fake", "real")
FAKE_INDEX = 0
REAL_INDEX = 1
#: ``resize``: the whole image to the input size (bilinear, antialiased; aspect not kept).
#: ``center-crop``: scale so the image covers the input size, then cut its centre (aspect kept).
RESIZE_MODES: tuple[str, str] = ("resize", "center-crop")


class SigmoidAdapter(nn.Module):
    """Turns a 1-logit (sigmoid) backbone into the 2-logit contract.

    The single logit ``z`` scores one class (``positive_index``); the adapter emits
    logits whose softmax equals the sigmoid: ``softmax([z/2, -z/2])[0] == sigmoid(z)``.
    """

    def __init__(self, backbone: nn.Module, positive_index: int = FAKE_INDEX) -> None:
        super().__init__()
        if positive_index not in (0, 1):
            raise ValueError(f"positive_index must be 0 or 1, got {positive_index!r}")
        self.backbone = backbone
        self.positive_index = positive_index

    def forward(self, x: Tensor) -> Tensor:
        z = self.backbone(x).reshape(x.shape[0], 1)
        half = z / 2
        pair = torch.cat([half, -half], dim=1)
        return pair if self.positive_index == 0 else pair.flip(1)


class Detector(nn.Module):
    """A 2-class deepfake detector on [0, 1] pixels of any size.

    ``forward`` returns logits N x 2 ordered as ``class_names`` (index 0 is ``fake``). ``fake_index`` is the
    fake class's index in the backbone's own output (a 1-logit backbone comes wrapped in ``SigmoidAdapter``,
    whose output already has two columns); ``resize`` is one of ``RESIZE_MODES``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str] = CLASS_NAMES,
        fake_index: int = FAKE_INDEX,
        resize: str = "resize",
    ) -> None:
        super().__init__()
        if tuple(class_names) != CLASS_NAMES:
            raise ValueError(f"class_names must be {CLASS_NAMES}, got {tuple(class_names)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={mean} std={std}")
        if fake_index not in (0, 1):
            raise ValueError(f"fake_index must be 0 or 1, got {fake_index!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if min(input_size) < 1:
            raise ValueError(f"input_size must be positive, got {tuple(input_size)}")
        self.backbone = backbone
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.class_names = tuple(class_names)
        self.fake_index = int(fake_index)
        self.resize = resize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def fit(self, x: Tensor) -> Tensor:
        """Images N x 3 x H x W in pixel units brought to ``input_size`` by the ``resize`` mode (differentiable)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) == self.input_size:
            return x
        return fit_image(x, self.input_size, self.resize)

    def preprocess(self, x: Tensor) -> Tensor:
        """``fit`` then mean/std normalisation: what the backbone takes."""
        x = self.fit(x)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (x - mean) / std

    def classify(self, prepared: Tensor) -> Tensor:
        """Logits N x 2 in ``CLASS_NAMES`` order from ``preprocess``'s output.

        Use this, never ``backbone`` directly, on prepared batches: it applies the ``fake_index`` order.
        """
        logits = self.backbone(prepared)
        return logits.flip(1) if self.fake_index != FAKE_INDEX else logits

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.preprocess(x))

    @torch.no_grad()
    def p_fake(self, x: Tensor) -> Tensor:
        """Probability of the ``fake`` class, one value per image."""
        return torch.softmax(self(x).float(), dim=1)[:, FAKE_INDEX]

    def called_fake(self, x: Tensor, limit: int | None = None) -> Tensor:
        """The images of ``x`` this detector calls fake (``p_fake >= 0.5``), in order, at most ``limit``: the fakes
        an attack on its verdict starts from."""
        return x[self.p_fake(x) >= 0.5][:limit]


def fit_image(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``x`` (N x 3 x H x W) to ``size`` (H, W) by a ``RESIZE_MODES`` mode; bilinear, antialiased, differentiable.

    ``center-crop`` follows torchvision's ``Resize`` + ``CenterCrop``: the shorter side (relative to ``size``)
    is scaled to fit, the longer one cut evenly on both sides (offsets rounded as ``CenterCrop`` does).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")
    th, tw = size
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (th, tw):
        return x
    if mode == "resize":
        return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    scale = max(th / h, tw / w)
    sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
    if (sh, sw) != (h, w):
        x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
    top, left = round((sh - th) / 2.0), round((sw - tw) / 2.0)
    return x[..., top : top + th, left : left + tw]
