"""The purifier registry: one ``PurifierSpec`` per purification defence, declared beside its function
(docs/CONTRIBUTING.md).

Every purifier is ``fn(x, *, <its parameters>, progress=None, should_stop=None) -> PurifyResult`` on
N x 3 x H x W images in [0, 1]. One that also takes ``runtime`` is given the worker's DIP engine settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from models.methods import Method, Registry


def _one_shot(params: Mapping[str, Any]) -> int:
    return 0


@dataclass(frozen=True)
class PurifierSpec(Method):
    """A purifier's declaration.

    ``iterative``: an optimisation whose cost grows with pixels and steps (DIP). The service runs it at a bounded
    working size (DFG_PURIFY_MAX_SIDE, as the paper's 512 x 512) and scales the result back, records where it
    ended, and caps ``max_iterations`` at DFG_MAX_DIP_ITERATIONS. ``batchable``: compatible queued jobs (equal
    parameters, equal working size) may run in one batch, one independent run per image.
    """

    iterative: bool = False
    batchable: bool = False
    #: How an adaptive attack differentiates through it (Athalye, Carlini & Wagner 2018, "Obfuscated gradients";
    #: docs/ATTACKS.md, "Adaptive attacks"): "identity" is BPDA with the identity as the backward pass (the forward
    #: is the real purifier), "approx" BPDA with ``surrogate``'s gradient as the backward pass, "exact"
    #: back-propagates through the function itself (it must be differentiable). The strongest one measured.
    bpda: Literal["identity", "approx", "exact"] = "identity"
    #: A differentiable approximation ``surrogate(x, **params) -> Tensor`` of the purifier (its parameters as the
    #: purifier takes them): the backward pass of ``bpda="approx"``.
    surrogate: Callable[..., Tensor] | None = None
    #: The parameter bounding its optimisation steps, if any: an adaptive attack may run the purifier inside its
    #: loop with fewer steps than the defence it attacks (``bpda_iterations``).
    iterations_param: str | None = None
    #: The optimisation steps a run with resolved ``params`` may take (0 for a one-shot purifier): what a job's
    #: cost plan counts (core/job_plan.py) and its progress runs up to.
    steps: Callable[[Mapping[str, Any]], int] = _one_shot

    kind: ClassVar[str] = "purifier"

    @property
    def randomized(self) -> bool:
        """Whether each run draws fresh randomness (it declares a ``seed``): EOT and resubmissions then differ."""
        return self.declares("seed")


PURIFIERS_REGISTRY: Registry[PurifierSpec] = Registry("purification method")


def register(spec: PurifierSpec) -> PurifierSpec:
    for hook in ("progress", "should_stop"):
        if not spec.takes(hook):
            raise ValueError(f"purifier {spec.name!r}: {spec.fn.__name__} must take {hook}=")
    if spec.bpda == "approx" and spec.surrogate is None:
        raise ValueError(f"purifier {spec.name!r}: bpda='approx' needs a surrogate")
    if spec.iterations_param is not None and not spec.declares(spec.iterations_param):
        raise ValueError(f"purifier {spec.name!r}: iterations_param {spec.iterations_param!r} is not declared")
    return PURIFIERS_REGISTRY.register(spec)


def get(name: str) -> PurifierSpec:
    return PURIFIERS_REGISTRY.get(name)


def names() -> list[str]:
    return PURIFIERS_REGISTRY.names()


def unregister(name: str) -> None:
    PURIFIERS_REGISTRY.unregister(name)
