"""L-inf Projected Gradient Descent (Madry et al. 2018); with ``random_start=False`` it is I-FGSM
(Kurakin et al. 2017). Gandhi & Jain used single-step FGSM; PGD is the stronger iterative baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks._common import LinfBall, check_batch, eval_mode, loss_and_input_gradient
from models.attacks.fgsm import EPS
from models.attacks.registry import TARGETED, AttackSpec, register
from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    random_start: bool = True,
    targeted: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``steps`` signed-gradient steps of ``step_size``, each projected onto the eps-ball around ``x``
    and onto [0, 1]. A random start draws uniformly from the eps-ball (``generator`` makes it reproducible).

    Long runs (queued jobs) report ``progress`` (mean cross-entropy of the step's input) and poll
    ``should_stop`` every ``min(10, steps // 10)`` steps; ``models.progress.Cancelled`` ends them."""
    p = PGD.check(
        {"eps": eps, "steps": steps, "step_size": step_size, "random_start": random_start, "targeted": targeted}
    )
    eps, steps, step_size = p["eps"], p["steps"], p["step_size"]
    y = check_batch(x, y)
    x = x.detach()
    if eps == 0:
        return x.clone()
    ball = LinfBall(x, eps)
    adv = ball.uniform(generator) if p["random_start"] else x.clone()
    sign = -1.0 if p["targeted"] else 1.0
    report_every = max(1, min(10, steps // 10))
    with eval_mode(model):
        for step in range(steps):
            loss, grad = loss_and_input_gradient(model, adv, y, first=step == 0)
            adv = ball.project(adv + sign * step_size * grad.sign())
            done = step + 1
            if done % report_every == 0 or done == steps:
                if progress is not None:  # float() syncs the device: only when someone listens
                    progress(Progress(iteration=done, max_iterations=steps, loss=float(loss) / len(x), stage="pgd"))
                check_stop(should_stop, done)
    return adv


def _steps(params: Mapping[str, Any]) -> int:
    return int(params["steps"])


PGD = register(
    AttackSpec(
        name="pgd",
        fn=pgd,
        params=(
            EPS,
            Param("steps", int, "signed-gradient steps", default=10, low=1, high=10_000),
            Param(
                "step_size",
                float,
                "size of each step, in pixel units",
                default=lambda p: p["eps"] / 4,
                default_doc="eps / 4",
                low=0.0,
                low_open=True,
                high=1.0,
            ),
            Param("random_start", bool, "start from a uniform draw in the eps-ball", public=False),
            TARGETED,
        ),
        description="projected gradient descent in the L-inf ball: steps signed-gradient steps of step_size",
        steps=_steps,
    )
)
