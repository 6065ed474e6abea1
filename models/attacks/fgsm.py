"""Fast Gradient Sign Method (Goodfellow et al. 2015), as used by Gandhi & Jain with eps = 0.02 (docs/PAPER.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.attacks._common import check_batch, eval_mode, input_gradient
from models.attacks.registry import TARGETED, AttackSpec, register
from models.methods import Param


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, targeted: bool = False) -> Tensor:
    """One signed-gradient step of size ``eps`` (pixel units), clipped to [0, 1].

    Untargeted: ``clip01(x + eps * sign(grad_x CE(f(x), y)))`` moves away from ``y``.
    Targeted: ``clip01(x - eps * sign(grad_x CE(f(x), y)))`` moves towards ``y``.
    """
    p = FGSM.check({"eps": eps, "targeted": targeted})
    y = check_batch(x, y)
    x = x.detach()
    if p["eps"] == 0:
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)
    step = -p["eps"] if p["targeted"] else p["eps"]
    return torch.clamp(x + step * grad.sign(), 0.0, 1.0)


#: L-inf budget in pixel units, shared by the signed-gradient attacks (FGSM, PGD).
#: The API refuses an eps under half an 8-bit level (1/510): every service delivers an 8-bit file, and rounding
#: to it undoes a perturbation that small. PGD's step_size has no such bound: steps add up.
EPS = Param(
    "eps", float, "L-inf budget in [0,1] pixel units", default=0.02, low=0.0, high=1.0, api_low=1 / 510,
    api_low_open=False,
)  # fmt: skip

FGSM = register(
    AttackSpec(
        name="fgsm",
        fn=fgsm,
        params=(EPS, TARGETED),
        description="one signed-gradient step of size eps (white-box, or crafted on a source detector)",
    )
)
