"""Square Attack, L-inf (Andriushchenko, Croce, Flammarion & Hein 2020): score-based, no gradients.

Implemented from the paper: the perturbation starts as vertical stripes of +-eps (one random sign per column and
channel); each query redraws one random square window of side ``s`` with a fresh +-eps per channel and keeps the
change when the margin loss ``Z_y - max_{j != y} Z_j`` (targeted: ``max_{j != t} Z_j - Z_t``) falls. The
window's share of the image, ``p``, starts at ``p_init`` and halves at the paper's fractions of the query budget
(10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000). Images stop being queried once they are fooled.
Gradient masking does not stop it, which makes it the suite's check on BPDA (docs/ATTACKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks._common import LinfBall, check_batch, check_labels, eval_mode, max_other_logit, true_logit
from models.attacks.fgsm import EPS
from models.attacks.registry import TARGETED, AttackSpec, register
from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop

#: Where the window's share halves, per 10,000 queries (the paper's schedule).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_share(p_init: float, query: int, queries: int) -> float:
    """``p`` at ``query`` of ``queries``: ``p_init`` halved at each of the schedule's marks passed."""
    at = int(query / queries * 10_000)
    return p_init / 2 ** sum(at > mark for mark in _HALVINGS)


def _margin(model: nn.Module, x: Tensor, y: Tensor, targeted: bool) -> Tensor:
    with torch.no_grad():
        logits = model(x).float()
    own, other = true_logit(logits, y), max_other_logit(logits, y)
    return other - own if targeted else own - other


def square(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    queries: int,
    p_init: float = 0.8,
    targeted: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Square Attack in the L-inf ball of ``eps``: at most ``queries`` model queries per image after the first."""
    p = SQUARE.check({"eps": eps, "queries": queries, "p_init": p_init, "targeted": targeted})
    eps, queries, targeted = p["eps"], p["queries"], p["targeted"]
    y = check_batch(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    n, c, h, w = x.shape
    dev = x.device

    def signs(shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 2, shape, generator=generator, device=dev).to(x.dtype) * 2 - 1

    with eval_mode(model):
        with torch.no_grad():
            check_labels(model(x[:1]).float(), y[:1])
        adv = (x + eps * signs((n, c, 1, w))).clamp(0, 1)
        loss = _margin(model, adv, y, targeted)
        rows = torch.arange(h, device=dev).view(1, 1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, 1, w)
        report_every = max(1, min(100, queries // 10))
        for q in range(queries):
            active = (loss >= 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            m = active.numel()
            side = max(1, min(round(math.sqrt(window_share(p["p_init"], q, queries) * h * w)), h - 1 if h > 1 else 1))
            top = torch.randint(0, max(1, h - side + 1), (m,), generator=generator, device=dev).view(m, 1, 1, 1)
            left = torch.randint(0, max(1, w - side + 1), (m,), generator=generator, device=dev).view(m, 1, 1, 1)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            x_a, delta = x[active], adv[active] - x[active]
            fresh = eps * signs((m, c, 1, 1))
            candidate = (x_a + torch.where(window, fresh, delta)).clamp(0, 1)
            new_loss = _margin(model, candidate, y[active], targeted)
            better = new_loss < loss[active]
            adv[active] = torch.where(better.view(m, 1, 1, 1), candidate, adv[active])
            loss[active] = torch.where(better, new_loss, loss[active])
            done = q + 1
            if done % report_every == 0 or done == queries:
                if progress is not None:
                    progress(Progress(iteration=done, max_iterations=queries, loss=float(loss.mean()), stage="square"))
                check_stop(should_stop, done)
    return LinfBall(x, eps).project(adv)


def _steps(params: Mapping[str, Any]) -> int:
    return int(params["queries"]) + 1


SQUARE = register(
    AttackSpec(
        name="square",
        fn=square,
        params=(
            EPS,
            Param(
                "queries",
                int,
                "model queries per image (forward passes, no gradients)",
                default=1000,
                low=1,
                high=100_000,
            ),
            Param(
                "p_init",
                float,
                "initial share of the image a window covers",
                default=0.8,
                low=0.0,
                low_open=True,
                high=1.0,
            ),
            TARGETED,
        ),
        description="Square Attack (Andriushchenko et al. 2020): random square updates kept when the margin falls",
        steps=_steps,
    )
)
