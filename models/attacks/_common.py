"""Shared plumbing for the attacks: argument checks, eval mode, the input gradient and logit margins."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_batch(x: Tensor, y: Tensor) -> None:
    """Images N x C x H x W in [0, 1] and one integer label per image (the pixel contract)."""
    if not torch.is_floating_point(x) or x.dim() != 4:
        raise ValueError(f"x must be a float tensor N x C x H x W, got {x.dtype} of shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0] or torch.is_floating_point(y):
        raise ValueError(f"y must hold one integer label per image ({x.shape[0]}), got {y.dtype} {tuple(y.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must lie in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]")


def check_number(name: str, value: float, *, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """ValueError naming ``value`` unless it is a finite number in [low, high] (or (low, high]).

    Infinity is refused even when ``high`` is: an infinite budget or margin never ends or overflows float32."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        if math.isinf(high):
            bound = f"{'>' if low_open else '>='} {low:g}"
        else:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_int(name: str, value: int, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Attack the model as deployed (BatchNorm statistics frozen, no dropout), then restore its mode.
    Gradients are enabled inside, even when the caller sits in ``torch.no_grad()``."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield model
    finally:
        model.train(was_training)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input only (see ``loss_and_input_gradient``)."""
    return loss_and_input_gradient(model, x, y)[1]


def loss_and_input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy (detached, 0-dim) and its gradient w.r.t. the input only.

    ``torch.autograd.grad`` w.r.t. ``x`` leaves no ``.grad`` on the model's parameters. The sum (not the
    mean) keeps per-image gradients independent of the batch size, so batched and one-by-one runs agree.
    """
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def class_mask(logits: Tensor, y: Tensor) -> Tensor:
    """Boolean N x K mask of each row's class ``y``. Built with ``scatter_`` rather than ``F.one_hot``,
    whose range check forces a host-device sync on CUDA (twice per CW iteration otherwise)."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)


def max_other_logit(logits: Tensor, y: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """``max_{j != y} Z_j`` per row.

    The other classes' maximum is taken after filling class ``y`` with -inf. Multiplying by a one-hot mask
    instead (``((1 - onehot) * Z).max()``, as torchattacks does) returns 0 whenever every other logit is
    negative, which freezes the CW loss: Carlini & Wagner's f needs the true maximum.
    """
    return logits.masked_fill(class_mask(logits, y) if mask is None else mask, float("-inf")).amax(dim=1)


def true_logit(logits: Tensor, y: Tensor) -> Tensor:
    return logits.gather(1, y[:, None]).squeeze(1)
