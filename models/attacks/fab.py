"""FAB, the fast adaptive boundary attack (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast
adaptive boundary attack"), in L-inf (``fab``) and L2 (``fab_l2``), for the detectors' two classes.

A minimum-norm attack, implemented from the paper: at each iterate ``x_i`` the decision boundary
``g(x) = Z_y(x) - Z_other(x) = 0`` is linearised, ``g(x_i) + w . (z - x_i) = 0`` with ``w = grad g(x_i)``, and
both ``x_i`` and the original ``x`` are projected onto that hyperplane within the [0, 1] box (the smallest move in
the attack's norm: ``project_linf``, ``project_l2``). The next iterate is a convex combination of the two
projections, biased towards the original by ``alpha = min(|d_i| / (|d_i| + |d_orig|), alpha_max)``, each
extrapolated by ``eta``. Once an iterate is adversarial, the smallest one is kept and the next iterate steps back
towards ``x`` by ``beta``. Restarts begin at random points around ``x`` within half the best norm found (or eps).
With two classes the untargeted attack is the only one: "the other class" is the target.

The returned image is the smallest adversarial found if its norm is at most ``eps``; otherwise the best found
clipped into the eps-ball (a perturbation within the budget, which may not fool the model).

Delivery (``round_finish``, on by default): a minimal adversarial sits just past the boundary, and the 8-bit rounding
of the delivered file (models/attacks/measure.py) mostly pushes it back (docs/ATTACKS.md, "FAB after 8-bit
rounding"). So the point returned is the least scaled-out one along the same direction,
``x + s (x_min - x)`` for ``s`` in ``1, 1.25, 1.5, 2, 3, 4, 6, ...`` up to ``eps / ||x_min - x||`` (clipped to
[0, 1]), whose 8-bit rounding still fools the model; the minimal one where none does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks._common import ball as make_ball
from models.attacks._common import check_batch, check_labels, eval_mode
from models.attacks.fgsm import EPS
from models.attacks.registry import EPS_L2, AttackSpec, register
from models.images import quantize_8bit
from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop

_BISECTIONS = 25
#: Doublings that bracket ``project_l2``'s step from its box-free value (2^40: any box move is reached).
_DOUBLINGS = 40


def project_linf(p: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """The smallest L-inf ``d`` (per row) with ``w . d = c`` and ``p + d`` in [0, 1]; where the box makes that
    impossible, the move of L-inf 1 that gets closest. ``d_j = clamp(t s_j, -p_j, 1 - p_j)`` with ``s_j = sign(c w_j)``
    makes ``sign(c) w . d`` non-decreasing in ``t``: the smallest ``t`` that reaches ``|c|`` is found by bisection."""
    n = p.shape[0]
    flat_p, flat_w = p.flatten(1), w.flatten(1)
    s = torch.sign(c)[:, None] * torch.sign(flat_w)
    lo, hi_box = -flat_p, 1 - flat_p
    target = c.abs()

    def reach(t: Tensor) -> Tensor:
        d = torch.clamp(t[:, None] * s, lo, hi_box)
        return torch.sign(c) * (flat_w * d).sum(dim=1)

    a = torch.zeros(n, device=p.device, dtype=p.dtype)
    b = torch.ones(n, device=p.device, dtype=p.dtype)
    for _ in range(_BISECTIONS):
        mid = (a + b) / 2
        ok = reach(mid) >= target
        b = torch.where(ok, mid, b)
        a = torch.where(ok, a, mid)
    return torch.clamp(b[:, None] * s, lo, hi_box).view_as(p)


def project_l2(p: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """The smallest L2 ``d`` (per row) with ``w . d = c`` and ``p + d`` in [0, 1]; where the box makes that impossible,
    the move that gets closest. By the KKT conditions of this separable problem ``d_j = clamp(t sign(c) w_j, -p_j,
    1 - p_j)`` for some ``t >= 0`` (without the box, ``t = |c| / ||w||^2``); ``sign(c) w . d`` is non-decreasing in
    ``t``, so ``t`` is bracketed by doubling from the box-free value and then found by bisection."""
    flat_p, flat_w = p.flatten(1), w.flatten(1)
    sw = torch.sign(c)[:, None] * flat_w
    lo, hi_box = -flat_p, 1 - flat_p
    target = c.abs()

    def reach(t: Tensor) -> Tensor:
        return (sw * torch.clamp(t[:, None] * sw, lo, hi_box)).sum(dim=1)

    b = target / (flat_w * flat_w).sum(dim=1).clamp(min=1e-20)
    for _ in range(_DOUBLINGS):
        short = reach(b) < target
        if not bool(short.any()):
            break
        b = torch.where(short, 2 * b, b)
    a = torch.zeros_like(b)
    for _ in range(_BISECTIONS):
        mid = (a + b) / 2
        ok = reach(mid) >= target
        b = torch.where(ok, mid, b)
        a = torch.where(ok, a, mid)
    return torch.clamp(b[:, None] * sw, lo, hi_box).view_as(p)


#: The projection onto the linearised boundary, per norm.
PROJECTIONS = {"linf": project_linf, "l2": project_l2}


def _margin_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``g = Z_y - Z_other`` (two classes) and its input gradient."""
    x = x.detach().requires_grad_(True)
    logits = model(x).float()
    g = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(g.sum(), x)
    return g.detach(), grad


def _margin(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(x).float()
    return logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, (1 - y)[:, None]).squeeze(1)


def fab(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    round_finish: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FAB-L-inf away from ``y`` (two classes): ``restarts`` runs of ``steps`` iterations."""
    p = FAB.check(
        {
            "eps": eps, "steps": steps, "restarts": restarts, "alpha_max": alpha_max, "eta": eta, "beta": beta,
            "round_finish": round_finish,
        }
    )  # fmt: skip
    return _fab(model, x, y, p, "linf", progress=progress, should_stop=should_stop, generator=generator)


def fab_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    round_finish: bool = True,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """FAB-L2 away from ``y`` (two classes), as ``fab`` otherwise; ``eps`` bounds each image's L2 norm."""
    p = FAB_L2.check(
        {
            "eps": eps, "steps": steps, "restarts": restarts, "alpha_max": alpha_max, "eta": eta, "beta": beta,
            "round_finish": round_finish,
        }
    )  # fmt: skip
    return _fab(model, x, y, p, "l2", progress=progress, should_stop=should_stop, generator=generator)


def _fab(
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
    eps, steps, restarts = p["eps"], p["steps"], p["restarts"]
    y = check_batch(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    n = x.shape[0]
    view = (n, 1, 1, 1)
    ball = make_ball(norm, x, eps)
    project = PROJECTIONS[norm]
    stage = FAB.name if norm == "linf" else FAB_L2.name
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x).float()
        check_labels(logits, y)
        if logits.shape[1] != 2:
            raise ValueError(f"fab here is the two-class attack, the model has {logits.shape[1]} classes")
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device)
        already = logits.argmax(dim=1) != y
        best_norm[already] = 0.0
        total = steps * restarts
        for r in range(restarts):
            if r == 0:
                cur = x.clone()
            else:
                radius = torch.where(torch.isfinite(best_norm), best_norm, torch.full_like(best_norm, eps)) / 2
                if norm == "linf":
                    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
                else:  # a random direction of unit L2 norm
                    u = ball.step(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
                cur = (x + u * radius.view(view)).clamp(0, 1)
            for i in range(steps):
                g, w = _margin_grad(model, cur, y)
                # Hyperplane g + w . (z - cur) = 0: from a point q, the move d needs w . d = -(g + w . (q - cur)).
                d_cur = project(cur, w, -g)
                c_orig = -(g + (w * (x - cur)).flatten(1).sum(dim=1))
                d_orig = project(x, w, c_orig)
                n_cur, n_orig = ball.size(d_cur), ball.size(d_orig)
                alpha = torch.clamp(n_cur / (n_cur + n_orig).clamp(min=1e-12), max=p["alpha_max"]).view(view)
                cur = ((1 - alpha) * (cur + p["eta"] * d_cur) + alpha * (x + p["eta"] * d_orig)).clamp(0, 1)
                fooled = _margin(model, cur, y) < 0
                dist = ball.distance(cur)
                smaller = fooled & (dist < best_norm)
                best_norm = torch.where(smaller, dist, best_norm)
                best = torch.where(smaller.view(view), cur, best)
                cur = torch.where(fooled.view(view), (1 - p["beta"]) * x + p["beta"] * cur, cur)
                done = r * steps + i + 1
                if progress is not None and (done % 10 == 0 or done == total):
                    finite = best_norm[torch.isfinite(best_norm)]
                    shown = float(finite.median()) if finite.numel() else float("inf")
                    progress(Progress(iteration=done, max_iterations=total, loss=shown, stage=stage))
                if done % 10 == 0:
                    check_stop(should_stop, done)
        within = best_norm <= eps
        if p["round_finish"]:
            best = scale_out(model, x, y, best, best_norm, eps=eps, found=within & (best_norm > 0))
    clipped = ball.project(best)
    return torch.where(within.view(view), best, clipped)


def scale_out(
    model: nn.Module, x: Tensor, y: Tensor, adv: Tensor, norm: Tensor, *, eps: float, found: Tensor
) -> Tensor:
    """Where ``found``: the least scaled-out point ``x + s (adv - x)``, ``1 <= s <= eps / norm`` on a ladder ending at
    the eps-ball's edge, whose 8-bit rounding the model classifies away from ``y``; ``adv`` where none is found."""
    view = (-1, 1, 1, 1)
    reach = torch.where(found, eps / norm.clamp(min=1e-12), torch.ones_like(norm))
    out, done = adv.clone(), ~found
    ladder = [1.0, 1.25, 1.5, 2.0]
    while ladder[-1] < float(reach.max()):
        ladder.append(ladder[-1] * 1.5)
    for s in ladder:
        if bool(done.all()):
            break
        scale = torch.minimum(torch.full_like(reach, s), reach)
        candidate = (x + (adv - x) * scale.view(view)).clamp(0, 1)
        fools = ~done & (_margin(model, quantize_8bit(candidate), y) < 0)
        out = torch.where(fools.view(view), candidate, out)
        done = done | fools
    return out


#: FAB's parameters besides its budget, the same in both norms.
_PARAMS = (
    Param("steps", int, "iterations per restart", default=20, low=1, high=10_000),
    Param("restarts", int, "runs from random points near x (the first from x)", default=1, low=1, high=100),
    Param("alpha_max", float, "largest bias towards the original image", default=0.1, low=0.0, high=1.0),
    Param("eta", float, "extrapolation of the projection step", default=1.05, low=1.0, high=2.0),
    Param("beta", float, "step back towards x after a success", default=0.9, low=0.0, high=1.0),
    Param(
        "round_finish",
        bool,
        "deliver the least scaled-out point (towards eps) whose 8-bit rounding still fools",
        default=True,
        public=False,
    ),
)


def _steps(params: Mapping[str, Any]) -> int:
    return int(params["steps"]) * int(params["restarts"])


FAB = register(
    AttackSpec(
        name="fab",
        fn=fab,
        params=(
            EPS,
            *_PARAMS,
        ),
        description="fast adaptive boundary attack (Croce & Hein 2020): minimum L-inf norm, kept within eps",
        steps=_steps,
    )
)


FAB_L2 = register(
    AttackSpec(
        name="fab_l2",
        fn=fab_l2,
        params=(
            EPS_L2,
            *_PARAMS,
        ),
        description="fast adaptive boundary attack in L2 (Croce & Hein 2020): minimum L2 norm, kept within eps",
        steps=_steps,
        norm="l2",
    )
)
