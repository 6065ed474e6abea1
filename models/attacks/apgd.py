"""APGD-CE: Auto-PGD on the cross-entropy (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks"), in L-inf (``apgd_ce``) and L2 (``apgd_ce_l2``).

Implemented from the paper's Algorithm 1:

* first step ``x1 = P(x0 + eta * s(grad))`` with ``eta = 2 eps``; then a momentum step
  ``z = P(xk + eta * s(grad))``, ``x(k+1) = P(xk + alpha (z - xk) + (1 - alpha)(xk - x(k-1)))``, alpha 0.75, where
  ``s`` is the steepest-ascent direction of unit norm (the sign in L-inf, ``grad / ||grad||_2`` in L2) and ``P`` the
  projection onto the ball within [0, 1] (models/attacks/_common.py);
* checkpoints ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06)``: at each one, per image, the step size halves and the iterate
  restarts from the best point so far if (1) fewer than ``rho = 0.75`` of the steps since the last checkpoint raised
  the loss, or (2) the step size was not halved at the last checkpoint and the best loss has not risen since then
  (as AutoAttack's ``autopgd_base.py`` counts it: condition 2 cannot fire at the first checkpoint, which has no
  earlier reduction to compare with);
* the point of highest loss is kept (``x_max``), so the result is never worse than the start. An image for which
  some iterate was misclassified gets the misclassified iterate of highest loss instead (the one farthest past the
  boundary, which best survives 8-bit delivery).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attacks._common import ball as make_ball
from models.attacks._common import check_batch, check_labels, eval_mode
from models.attacks.fgsm import EPS
from models.attacks.registry import EPS_L2, TARGETED, AttackSpec, register
from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop

#: Momentum and the fraction of loss-raising steps a checkpoint asks for (the paper's alpha and rho).
ALPHA, RHO = 0.75, 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD checks its progress (the paper's ``w_j``, ``w_0 = 0`` excluded)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    marks = (math.ceil(round(q * steps, 9)) for q in p[1:])  # round: 0.57 * 100 is 57.000000000000007 in floats
    return sorted({m for m in marks if m <= steps})


def halve_step(raised: Tensor, window: int, best_loss: Tensor, best_at_mark: Tensor, reduced: Tensor) -> Tensor:
    """Which images halve their step size at a checkpoint (the paper's conditions, per image): (1) fewer than ``RHO``
    of the ``window`` steps since the last checkpoint raised the loss (``raised`` counts them), or (2) the step size
    was not ``reduced`` at the last checkpoint and the best loss has not risen above ``best_at_mark`` since."""
    return (raised < RHO * window) | (~reduced & (best_loss <= best_at_mark))


def _loss_grad(model: nn.Module, x: Tensor, y: Tensor, sign: float, *, first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image objective (cross-entropy; its negative when targeted), its input gradient, and the predictions."""
    x = x.detach().requires_grad_(True)
    logits = model(x).float()
    if first:
        check_labels(logits, y)
    loss = sign * F.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad, logits.detach().argmax(dim=1)


def apgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    random_start: bool = True,
    targeted: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-CE in the L-inf ball of radius ``eps`` around ``x`` (and [0, 1]): ``steps`` gradient steps after the
    one at the start (``steps + 1`` forward and backward passes)."""
    p = APGD_CE.check({"eps": eps, "steps": steps, "random_start": random_start, "targeted": targeted})
    return _apgd(model, x, y, p, "linf", progress=progress, should_stop=should_stop, generator=generator)


def apgd_ce_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    random_start: bool = True,
    targeted: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD-CE in the L2 ball of radius ``eps`` around each image (and [0, 1]), as ``apgd_ce`` otherwise."""
    p = APGD_CE_L2.check({"eps": eps, "steps": steps, "random_start": random_start, "targeted": targeted})
    return _apgd(model, x, y, p, "l2", progress=progress, should_stop=should_stop, generator=generator)


def _apgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    p: Mapping[str, Any],
    norm: str,
    *,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    generator: torch.Generator | None,
) -> Tensor:
    eps, steps = p["eps"], p["steps"]
    y = check_batch(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    n = x.shape[0]
    view = (n, 1, 1, 1)
    ball = make_ball(norm, x, eps)
    project = ball.project
    adv = ball.uniform(generator) if p["random_start"] else x.clone()
    sign = -1.0 if p["targeted"] else 1.0

    def fooled(pred: Tensor) -> Tensor:
        return pred == y if p["targeted"] else pred != y

    stage = APGD_CE.name if norm == "linf" else APGD_CE_L2.name
    marks = set(checkpoints(steps))
    report_every = max(1, min(10, steps // 10))
    with eval_mode(model):
        loss, grad, pred = _loss_grad(model, adv, y, sign, first=True)
        best_loss, x_max, grad_max = loss.clone(), adv.clone(), grad.clone()
        adv_loss = torch.where(fooled(pred), loss, torch.full_like(loss, -math.inf))
        x_adv = torch.where(fooled(pred).view(view), adv, x)
        eta = torch.full((n,), 2 * eps, device=x.device)
        prev = adv.clone()
        raised = torch.zeros(n, device=x.device)
        last_mark, best_at_mark = 0, best_loss.clone()
        reduced = torch.ones(n, dtype=torch.bool, device=x.device)  # AutoAttack: no condition 2 at the first mark
        for k in range(steps):
            z = project(adv + eta.view(view) * ball.step(grad))
            new = z if k == 0 else project(adv + ALPHA * (z - adv) + (1 - ALPHA) * (adv - prev))
            prev, adv = adv, new
            new_loss, grad, pred = _loss_grad(model, adv, y, sign, first=False)
            raised += (new_loss > loss).float()
            loss = new_loss
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            x_max = torch.where(better.view(view), adv, x_max)
            grad_max = torch.where(better.view(view), grad, grad_max)
            hit = fooled(pred) & (loss > adv_loss)
            adv_loss = torch.where(hit, loss, adv_loss)
            x_adv = torch.where(hit.view(view), adv, x_adv)
            done = k + 1
            if done in marks:
                stuck = halve_step(raised, done - last_mark, best_loss, best_at_mark, reduced)
                eta = torch.where(stuck, eta / 2, eta)
                adv = torch.where(stuck.view(view), x_max, adv)
                prev = torch.where(stuck.view(view), x_max, prev)
                grad = torch.where(stuck.view(view), grad_max, grad)
                loss = torch.where(stuck, best_loss, loss)
                raised.zero_()
                last_mark, best_at_mark, reduced = done, best_loss.clone(), stuck
            if done % report_every == 0 or done == steps:
                if progress is not None:
                    progress(Progress(iteration=done, max_iterations=steps, loss=float(best_loss.mean()), stage=stage))
                check_stop(should_stop, done)
    found = torch.isfinite(adv_loss)
    return torch.where(found.view(view), x_adv, x_max)


def _steps(params: Mapping[str, Any]) -> int:
    return int(params["steps"]) + 1


APGD_CE = register(
    AttackSpec(
        name="apgd_ce",
        fn=apgd_ce,
        params=(
            EPS,
            Param("steps", int, "gradient steps after the first evaluation", default=100, low=1, high=10_000),
            Param("random_start", bool, "start from a uniform draw in the eps-ball", public=False),
            TARGETED,
        ),
        description="Auto-PGD on the cross-entropy (Croce & Hein 2020): step-size schedule, momentum, checkpoints",
        steps=_steps,
    )
)


APGD_CE_L2 = register(
    AttackSpec(
        name="apgd_ce_l2",
        fn=apgd_ce_l2,
        params=(
            EPS_L2,
            Param("steps", int, "gradient steps after the first evaluation", default=100, low=1, high=10_000),
            Param("random_start", bool, "start from a random point on the eps-sphere", public=False),
            TARGETED,
        ),
        description="Auto-PGD on the cross-entropy in L2 (Croce & Hein 2020): eps is the whole perturbation's L2 norm",
        steps=_steps,
        norm="l2",
    )
)
