"""Fast Gradient Sign Method (Goodfellow et al. 2015), as used by Gandhi & Jain with eps = 0.02."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.attacks._common import check_batch, check_number, eval_mode, input_gradient


def check_fgsm(*, eps: float, targeted: bool = False) -> None:
    """FGSM's hyper-parameter checks, callable before any image is at hand (ValueError naming the value)."""
    check_number("eps", eps, low=0.0, high=1.0)


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, targeted: bool = False) -> Tensor:
    """One signed-gradient step of size ``eps`` (pixel units), clipped to [0, 1].

    Untargeted: ``clip01(x + eps * sign(grad_x CE(f(x), y)))`` moves away from ``y``.
    Targeted: ``clip01(x - eps * sign(grad_x CE(f(x), y)))`` moves towards ``y``.
    """
    check_fgsm(eps=eps, targeted=targeted)
    check_batch(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)
    step = -eps if targeted else eps
    return torch.clamp(x + step * grad.sign(), 0.0, 1.0)
