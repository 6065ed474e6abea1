"""The detector module: a backbone wrapped so that it takes images in pixel units.

Resizing to the backbone's input size and mean/std normalisation happen here, differentiably,
so attacks and purifiers work on the user's image at its own resolution in [0, 1].
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

    ``forward`` returns logits N x 2 ordered as ``class_names`` (index 0 is ``fake``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str] = CLASS_NAMES,
    ) -> None:
        super().__init__()
        if tuple(class_names) != CLASS_NAMES:
            raise ValueError(f"class_names must be {CLASS_NAMES}, got {tuple(class_names)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={mean} std={std}")
        self.backbone = backbone
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.class_names = tuple(class_names)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def preprocess(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (x - mean) / std

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.preprocess(x))

    @torch.no_grad()
    def p_fake(self, x: Tensor) -> Tensor:
        """Probability of the ``fake`` class, one value per image."""
        return torch.softmax(self(x).float(), dim=1)[:, FAKE_INDEX]
