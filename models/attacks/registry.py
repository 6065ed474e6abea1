"""The attack registry: one ``AttackSpec`` per attack, declared beside its function (docs/CONTRIBUTING.md).

Every attack is ``fn(model, x, y, *, <its parameters>, [progress], [should_stop], [generator])`` on [0, 1]
pixels, returning the adversarial images (a Tensor) or a result with ``.adv`` and per-image ``.iterations``
(CW-L2). ``AttackSpec.run`` hides that difference from callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from models.methods import Method, Param, Registry
from models.progress import ProgressFn, StopFn

#: Which synchronous step budget of the service counts an attack's steps: "gradient" (signed-gradient steps,
#: DFG_PGD_SYNC_MAX_STEPS) or "optimizer" (optimisation steps, DFG_CW_SYNC_MAX_STEPS).
SyncBudget = Literal["gradient", "optimizer"]

#: Supplied by the caller's machinery (job progress, cancellation, seeding), never by a request.
RESERVED: frozenset[str] = frozenset({"progress", "should_stop", "generator"})

TARGETED = Param(
    "targeted",
    bool,
    "aim at the class `y` instead of away from it",
)


#: The L2 attacks' budget: the L2 norm of the whole perturbation, in [0, 1] pixel units, of the image the detector sees
#: (its fitted input). A per-pixel figure does not carry over between image sizes; docs/ATTACKS.md, "L2 budgets". The
#: API refuses a radius under half an 8-bit level, as for L-inf: no pixel could move far enough to survive rounding.
EPS_L2 = Param(
    "eps", float, "L2 budget (the whole perturbation's L2 norm) in [0,1] pixel units of the fitted image", default=1.0,
    low=0.0, high=10_000.0, api_low=1 / 510, api_low_open=False,
)  # fmt: skip


def _one_step(params: Mapping[str, Any]) -> int:
    return 1


@dataclass(frozen=True)
class Crafted:
    """What ``AttackSpec.run`` returns: the adversarial images as crafted (float, not yet delivered) and the
    optimisation steps each one took."""

    adv: Tensor
    iterations: list[int]


@dataclass(frozen=True)
class AttackSpec(Method):
    """An attack's declaration. ``steps(params)`` bounds the gradient steps it may run per image (1 for FGSM,
    ``steps`` for PGD, ``search_steps * max_iterations`` for CW-L2): the service's synchronous budget counts it,
    and progress reports run up to it."""

    steps: Callable[[Mapping[str, Any]], int] = _one_step
    sync_budget: SyncBudget = "gradient"
    #: The norm ``eps`` bounds: "linf", or "l2" (the delivery then keeps the 8-bit file within it:
    #: ``models.attacks.measure.fit_l2_budget``).
    norm: str = "linf"

    kind: ClassVar[str] = "attack"

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        params: Mapping[str, Any],
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
        generator: torch.Generator | None = None,
    ) -> Crafted:
        """Call the attack with resolved ``params`` and whichever of the hooks it takes."""
        hooks = {"progress": progress, "should_stop": should_stop, "generator": generator}
        extra = {k: v for k, v in hooks.items() if v is not None and self.takes(k)}
        out = self.fn(model, x, y, **params, **extra)
        if isinstance(out, Tensor):
            return Crafted(adv=out, iterations=[self.steps(params)] * len(x))
        return Crafted(adv=out.adv, iterations=[int(i) for i in out.iterations.tolist()])


ATTACKS_REGISTRY: Registry[AttackSpec] = Registry("attack method")


def register(spec: AttackSpec) -> AttackSpec:
    reserved = sorted(RESERVED & {p.name for p in spec.params})
    if reserved:
        raise ValueError(f"attack {spec.name!r} declares {reserved}, which the caller supplies")
    return ATTACKS_REGISTRY.register(spec)


def get(name: str) -> AttackSpec:
    return ATTACKS_REGISTRY.get(name)


def names() -> list[str]:
    return ATTACKS_REGISTRY.names()


def unregister(name: str) -> None:
    ATTACKS_REGISTRY.unregister(name)


def resolve_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults (or a preset) overridden by ``params``, validated; unknown names are a ValueError naming them."""
    return get(method).resolve(params)


#: The same as ``resolve_params``: every ValueError a request's parameters can cause, raised before any image is
#: read or any job is queued.
check_params = resolve_params


def attack_steps(method: str, params: Mapping[str, Any]) -> int:
    """Gradient steps (one forward and backward pass each) the attack may run on an image (an upper bound)."""
    spec = get(method)
    return int(spec.steps(spec.resolve(params)))


def tunable_params(method: str) -> list[str]:
    """Every declared keyword parameter of ``method`` (the ones a request may set: ``get(method).request_names``)."""
    return [p.name for p in get(method).params]
