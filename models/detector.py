"""The detector module: a backbone wrapped so that it takes images in pixel units.

Resizing to the backbone's input size and mean/std normalisation happen here, differentiably,
so attacks and purifiers work on the user's image at its own resolution in [0, 1].

Every caller sees logits ordered ``CLASS_NAMES`` (fake first), whatever order the backbone was trained
with: a backbone whose fake class is at index 1 (``fake_index=1``, common outside this project) has its
logits permuted here, so attacks, scoring, training and evaluation stay correct without knowing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.fitting import FIT_MODES, Fitting

#: Class order used by every detector: ImageFolder sorts ``fake`` before ``real`` (as in the paper).
CLASS_NAMES: tuple[str, str] = ("fake", "real")
FAKE_INDEX = 0
REAL_INDEX = 1
#: How an image is fitted to the input size: models/fitting.py.
RESIZE_MODES: tuple[str, ...] = FIT_MODES
#: The cut when neither a request nor the checkpoint gives an operating threshold (``operating_threshold``).
DEFAULT_THRESHOLD = 0.5


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
    whose output already has two columns); ``resize``, ``resize_short``, ``interpolation`` and ``antialias`` make its
    ``fitting`` (models/fitting.py).
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
        resize_short: int | None = None,
        interpolation: str = "bilinear",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if tuple(class_names) != CLASS_NAMES:
            raise ValueError(f"class_names must be {CLASS_NAMES}, got {tuple(class_names)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got mean={mean} std={std}")
        if fake_index not in (0, 1):
            raise ValueError(f"fake_index must be 0 or 1, got {fake_index!r}")
        self.backbone = backbone
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.fitting = Fitting(
            self.input_size, mode=resize, short_side=resize_short, interpolation=interpolation, antialias=antialias
        )
        #: True on the view ``prefitted`` returns: its inputs were fitted already and are taken as they are.
        self.takes_fitted = False
        self.class_names = tuple(class_names)
        self.fake_index = int(fake_index)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def fit(self, x: Tensor) -> Tensor:
        """Images N x 3 x H x W in pixel units brought to ``input_size`` by the ``fitting`` (differentiable)."""
        if self.takes_fitted:
            if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_size:
                raise ValueError(
                    f"this view of the detector takes images fitted to {self.input_size} already, got shape "
                    f"{tuple(x.shape)}"
                )
            return x
        return self.fitting.apply(x)

    def prefitted(self) -> Detector:
        """This detector (same weights, same buffers) for images that ``fit`` has brought to its input already.

        A fitting is not idempotent (``short-side-crop`` would resize a fitted 224 px image to 256 and cut it again),
        so code that fits a folder once and then attacks or trains on the fitted tensors scores them through this
        view: ``view(detector.fit(x)) == detector(x)``, exactly."""
        view = copy.copy(self)  # shares the modules, parameters and buffers; only the flag below differs
        view.__dict__["takes_fitted"] = True
        return view

    @property
    def resize(self) -> str:
        return self.fitting.mode

    def normalize(self, fitted: Tensor) -> Tensor:
        """Mean/std normalisation of images ``fit`` has brought to the input already."""
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return (fitted - mean) / std

    def preprocess(self, x: Tensor) -> Tensor:
        """``fit`` then mean/std normalisation: what the backbone takes."""
        return self.normalize(self.fit(x))

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

    def called_fake(self, x: Tensor, limit: int | None = None, *, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
        """The images of ``x`` this detector calls fake (``p_fake >= threshold``), in order, at most ``limit``: the
        fakes an attack on its verdict starts from."""
        return x[self.p_fake(x) >= threshold][:limit]


def fit_image(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``x`` (N x 3 x H x W) to ``size`` (H, W) by a ``resize`` or ``center-crop`` fitting, bilinear and antialiased
    (face crops and pastes: models/faces.py)."""
    return Fitting((int(size[0]), int(size[1])), mode=mode).apply(x)


def verdict(p_fake: Tensor, threshold: float) -> Tensor:
    """Class index per image: ``fake`` where ``p_fake >= threshold``, else ``real``. Every label the service, the CLI
    and the evaluations give comes from here (or ``label_name``), at the operating threshold of
    ``operating_threshold``."""
    return torch.where(p_fake >= threshold, FAKE_INDEX, REAL_INDEX)


def label_name(p_fake: float, threshold: float) -> str:
    return CLASS_NAMES[FAKE_INDEX] if p_fake >= threshold else CLASS_NAMES[REAL_INDEX]


def operating_threshold(requested: float | None, fitted: float | None) -> tuple[float, str]:
    """The threshold a verdict uses and where it came from: the request's, else the checkpoint's fitted one
    (``CheckpointMeta.threshold``), else 0.5. The one rule of /detect, /attack, /purify, the jobs and the CLI."""
    if requested is not None:
        if isinstance(requested, bool) or not 0 <= requested <= 1 or math.isnan(requested):
            raise ValueError(f"threshold must be in [0, 1], got {requested!r}")
        return float(requested), "request"
    if fitted is not None:
        return float(fitted), "checkpoint"
    return DEFAULT_THRESHOLD, "default"


class AtThreshold(nn.Module):
    """A detector whose argmax is its verdict at ``threshold``: the fake logit lowered by ``logit(threshold)``.

    Attacks decide success, margins and early stops by argmax (CW's kappa, FAB's boundary, APGD's checks); run on
    this module they aim at the operating point the service judges with, not at 0.5. At 0.5 it adds nothing
    (``at_threshold`` returns the detector itself). Probabilities from this module are not p_fake: read p_fake from
    the detector."""

    def __init__(self, model: nn.Module, threshold: float) -> None:
        super().__init__()
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.model = model
        t = min(max(threshold, 1e-12), 1 - 1e-12)
        # logit(p) - logit(t) >= 0 exactly when p >= t: the shift moves the 2-logit softmax's boundary to t.
        self.shift = math.log(t / (1 - t))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        shift = torch.zeros_like(logits)
        shift[:, FAKE_INDEX] = self.shift
        return logits - shift


def at_threshold(model: nn.Module, threshold: float) -> nn.Module:
    return model if threshold == DEFAULT_THRESHOLD else AtThreshold(model, threshold)
