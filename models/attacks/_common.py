"""Shared plumbing for the attacks: argument checks, eval mode, the input gradient and logit margins."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_batch(x: Tensor, y: Tensor) -> Tensor:
    """Images N x C x H x W of finite values in [0, 1] and one integer class index per image (the pixel contract).

    Returns ``y`` as int64, the dtype the losses index with: any integer dtype is accepted (int32 and uint8
    labels are what numpy callers pass), booleans and floats are not. The upper end of the labels' range is
    checked against the model's logits by ``check_labels`` once they exist."""
    if not isinstance(x, Tensor) or not torch.is_floating_point(x) or x.dim() != 4:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor N x C x H x W, got {got}")
    integer = isinstance(y, Tensor) and not torch.is_floating_point(y) and not torch.is_complex(y)
    if not integer or y.dtype == torch.bool or y.dim() != 1 or y.shape[0] != x.shape[0]:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must hold one integer label per image ({x.shape[0]}), got {got}")
    if x.numel():
        if bool(torch.isnan(x).any()):
            raise ValueError("x must lie in [0, 1], got NaN values")
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"x must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"y must hold class indices >= 0, got {int(y.min())}")
    return y.long()


def check_labels(logits: Tensor, y: Tensor) -> None:
    """The labels index the model's classes (one check per attack, on its first logits)."""
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"y holds class index {int(y.max())} but the model has {logits.shape[1]} classes")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Attack the model as deployed (BatchNorm statistics frozen, no dropout), then give every submodule back
    the mode it had: ``model.train(was_training)`` would set all of them to the wrapper's mode, so a wrapper in
    training mode around an eval-mode detector would leave the detector training. Gradients are enabled inside,
    even when the caller sits in ``torch.no_grad()``."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield model
    finally:
        for m, training in modes:
            m.training = training


def input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy w.r.t. the input only (see ``loss_and_input_gradient``)."""
    return loss_and_input_gradient(model, x, y)[1]


def loss_and_input_gradient(model: nn.Module, x: Tensor, y: Tensor, *, first: bool = True) -> tuple[Tensor, Tensor]:
    """The summed cross-entropy (detached, 0-dim) and its gradient w.r.t. the input only.

    ``torch.autograd.grad`` w.r.t. ``x`` leaves no ``.grad`` on the model's parameters. The sum (not the
    mean) keeps per-image gradients independent of the batch size, so batched and one-by-one runs agree.
    ``first`` checks the labels against the logits (``check_labels``); iterative attacks pass it on step one only.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x).float()
    if first:  # later steps of an iterative attack see the same model: no sync to check again
        check_labels(logits, y)
    loss = F.cross_entropy(logits, y, reduction="sum")
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


class LinfBall:
    """The L-inf ball of radius ``eps`` around ``x`` within the pixel box [0, 1], as pixel-wise bounds: what PGD,
    APGD-CE, FAB and Square project onto."""

    #: The ball's norm, as the attacks' records name it.
    norm = "linf"

    def __init__(self, x: Tensor, eps: float) -> None:
        self.x, self.eps = x, eps
        self.lower, self.upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)

    def project(self, z: Tensor) -> Tensor:
        return torch.min(torch.max(z, self.lower), self.upper)

    def uniform(self, generator: torch.Generator | None = None) -> Tensor:
        """A uniform draw from the ball (``generator`` makes it reproducible), projected into [0, 1]."""
        noise = torch.rand(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
        return self.project(self.x + (2 * noise - 1) * self.eps)

    @staticmethod
    def size(d: Tensor) -> Tensor:
        """``||d||_inf`` per image."""
        return d.flatten(1).abs().amax(dim=1)

    def distance(self, z: Tensor) -> Tensor:
        """``||z - x||_inf`` per image."""
        return self.size(z - self.x)

    def step(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit L-inf norm: the gradient's sign."""
        return grad.sign()


class L2Ball:
    """The L2 ball of radius ``eps`` around ``x`` (per image, over all its pixels) within [0, 1]: what APGD-CE-L2 and
    FAB-L2 project onto.

    ``project`` rescales ``z - x`` onto the sphere when it lies outside, then clips to [0, 1]. Clipping moves every
    pixel towards ``x`` (which lies in [0, 1]), so the result stays in the ball; it is the exact projection onto the
    intersection when no pixel is clipped, and a feasible point close to it otherwise (AutoAttack projects the same
    way)."""

    norm = "l2"

    def __init__(self, x: Tensor, eps: float) -> None:
        self.x, self.eps = x, eps

    @staticmethod
    def size(d: Tensor) -> Tensor:
        """``||d||_2`` per image."""
        return d.flatten(1).norm(dim=1)

    def distance(self, z: Tensor) -> Tensor:
        """``||z - x||_2`` per image."""
        return self.size(z - self.x)

    def project(self, z: Tensor) -> Tensor:
        delta = z - self.x
        scale = (self.eps / self.distance(z).clamp(min=1e-12)).clamp(max=1.0)
        return (self.x + delta * scale.view(-1, *[1] * (z.dim() - 1))).clamp(0.0, 1.0)

    def step(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit L2 norm: the gradient divided by its norm (zero where it is zero)."""
        return grad / self.size(grad).clamp(min=1e-12).view(-1, *[1] * (grad.dim() - 1))

    def uniform(self, generator: torch.Generator | None = None) -> Tensor:
        """A point on the sphere of radius ``eps`` in a direction drawn uniformly (a normalised Gaussian), clipped to
        [0, 1], as AutoAttack's L2 start."""
        noise = torch.randn(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
        return (self.x + self.eps * self.step(noise)).clamp(0.0, 1.0)


Ball = LinfBall | L2Ball


def ball(norm: str, x: Tensor, eps: float) -> Ball:
    """The ``norm`` ("linf" or "l2") ball of radius ``eps`` around ``x``, within [0, 1]."""
    if norm == "linf":
        return LinfBall(x, eps)
    if norm == "l2":
        return L2Ball(x, eps)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
