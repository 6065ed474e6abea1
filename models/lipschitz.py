"""Lipschitz regularisation of detectors (Gandhi & Jain, section "Lipschitz regularisation"; docs/PAPER.md).

The defence penalises the detector's input gradient during training:
``loss = CE + lambda * mean_{k, n, pixels} (dZ_k / dx)^2``, over both logits ``k``, the batch and every pixel of
the [0, 1] input (the pixel contract, so the penalty is in the same units as an attack's eps). It needs double
backpropagation: the gradient of the penalty w.r.t. the weights goes through the input gradient, hence
``create_graph=True``.

A ReLU network is piecewise linear, so its input gradient is piecewise constant and the penalty's own gradient
sees no curvature; the paper therefore swaps ReLU for a smooth "HHReLU" (Huber-like: 0, then a parabola of
width ``d``, then linear), ``hhrelu_`` below. It has no parameters, so a checkpoint's state dict is the same
with or without it: the architecture name (``resnet18_hhrelu``) is what tells the loader to swap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: The paper's HHReLU width.
DEFAULT_D = 0.5


def hhrelu(x: Tensor, d: float = DEFAULT_D) -> Tensor:
    """0 for x <= 0, x^2 / (2d) for 0 < x <= d, x - d/2 beyond: C^1 (value and slope match at 0 and d)."""
    pos = x.clamp_min(0)
    return torch.where(pos <= d, pos * pos / (2 * d), pos - d / 2)


class HHReLU(nn.Module):
    """Module form of ``hhrelu``; a drop-in replacement for ``nn.ReLU``."""

    def __init__(self, d: float = DEFAULT_D) -> None:
        super().__init__()
        if not (d > 0 and math.isfinite(d)):
            raise ValueError(f"HHReLU width d must be a positive number, got {d!r}")
        self.d = float(d)

    def forward(self, x: Tensor) -> Tensor:
        return hhrelu(x, self.d)

    def extra_repr(self) -> str:
        return f"d={self.d}"


def hhrelu_(model: nn.Module, d: float = DEFAULT_D) -> int:
    """Replace every ``nn.ReLU`` submodule of ``model`` by ``HHReLU(d)`` in place; returns how many were swapped.

    torchvision's ResNet blocks call one ``self.relu`` module twice and never use ``F.relu``, so swapping the
    modules covers every activation. Raises ``ValueError`` when there is nothing to swap (a model built from
    functional ReLUs would otherwise silently stay piecewise linear).
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, HHReLU(d))
                swapped += 1
    if swapped == 0:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU modules to replace with HHReLU")
    return swapped


def lipschitz_penalty(x: Tensor, logits: Tensor) -> Tensor:
    """``mean over k, batch and pixels of (dZ_k / dx)^2``, differentiable w.r.t. the weights.

    ``x`` must have ``requires_grad`` set *before* the forward pass that produced ``logits``. Each logit is
    summed over the batch before differentiating: with BatchNorm in eval mode (or none) that is exactly the
    per-image gradient; in train mode BatchNorm's batch statistics add cross-image terms of order 1 / batch
    size, as in the paper's code, which differentiated the batch sum too.
    """
    if not x.requires_grad:
        raise ValueError("x must require grad before the forward pass (x.requires_grad_(True))")
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"need N x K logits for N = {x.shape[0]} images, got {tuple(logits.shape)}")
    squares = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), x, create_graph=True)
        squares.append(grad.pow(2).mean())
    return torch.stack(squares).mean()


def input_gradient_norm(model: nn.Module, x: Tensor, *, batch_size: int = 64) -> float:
    """The same quantity as ``lipschitz_penalty`` measured on a trained model (eval mode, no graph kept):
    the mean squared input gradient of the logits, to compare regularised and plain detectors."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                for k in range(logits.shape[1]):
                    (grad,) = torch.autograd.grad(logits[:, k].sum(), xb, retain_graph=k + 1 < logits.shape[1])
                    total += float(grad.pow(2).sum())
                    count += grad.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)
