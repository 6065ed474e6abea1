"""Adaptive attacks on a purification defence: the attack optimises against the whole pipeline purify -> detect.

Attacking the bare detector and purifying afterwards measures a defence against an attacker who ignores it.
Since Athalye, Carlini & Wagner (2018, "Obfuscated gradients") an input-purification defence is evaluated against
one who does not (docs/ATTACKS.md, "Adaptive attacks"):

* **BPDA** (backward pass differentiable approximation): the forward pass runs the real purifier, the backward
  pass replaces it by a differentiable approximation (``PurifierSpec.bpda == "approx"``: JPEG, through
  models/purify/differentiable.py's DCT-quantisation model), by the identity (``"identity"``: bit depth, DIP), or
  back-propagates through it where it is differentiable (``"exact"``: the median filter). Each purifier declares
  the strongest of these measured (docs/ATTACKS.md, "Which gradient for which purifier"); ``Defense.bpda`` may
  ask for another (a comparison).
* **EOT** (expectation over transformation, Athalye et al. 2018): a randomised purifier (one that declares a
  ``seed``, DIP) runs ``eot_samples`` times per forward pass with fresh seeds, and the logits are averaged. For
  two classes the logit margin ``Z_y - Z_other`` is linear in the logits, so the averaged margin (CW-L2, APGD's
  checks) is exactly the mean of the per-run margins and its gradient the mean of theirs.
* **Judging as a defender**: the delivered 8-bit file is purified ``resubmissions`` times with seeds the attack
  never drew, and the detector classifies each output. A randomised defence that stops one resubmission of R
  does not stop the attacker who resubmits: the worst case (``success_any``) is reported beside the rate.

``Defended`` is a plain ``nn.Module``, so every registered attack runs against it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.attacks._common import eval_mode
from models.methods import Param
from models.progress import ProgressFn, StopFn
from models.purify import registry as purifiers
from models.purify.registry import PurifierSpec

#: How an attack differentiates through a purifier (``models.purify.registry.PurifierSpec.bpda``).
BpdaMode = Literal["identity", "approx", "exact"]

#: The ``defense`` of an attack on the bare detector.
NO_DEFENSE = "none"

#: Seeds a randomised purifier is judged with start this far from those the attack draws (which count up from the
#: defence's seed), so no judging run repeats a run the attacker optimised against.
JUDGE_SEED_OFFSET = 2**30
_SEED_SPACE = 2**31 - 1

EOT_SAMPLES = Param(
    "eot_samples", int, "purifier runs averaged per attack step (EOT; randomised purifiers)", default=1, low=1, high=64
)
RESUBMISSIONS = Param(
    "resubmissions",
    int,
    "independent purifier runs the delivered file is judged by (randomised purifiers)",
    default=3,
    low=1,
    high=32,
)
BPDA_ITERATIONS = Param(
    "bpda_iterations",
    int,
    "steps of an iterative purifier inside the attack (default: the defence's own)",
    low=1,
    high=100_000,
    nullable=True,
)
#: The adaptive attack's own settings (beside the defence's parameters), as the API form and the CLI take them.
ADAPTIVE_PARAMS: tuple[Param, ...] = (EOT_SAMPLES, RESUBMISSIONS, BPDA_ITERATIONS)


@dataclass(frozen=True)
class Defense:
    """A purifier with resolved ``params`` (keyword names), as an adaptive attack attacks and a defender judges.

    ``seed`` is where the attack's draws of a randomised purifier start; the judge's runs start at
    ``seed + JUDGE_SEED_OFFSET``."""

    purifier: str
    params: dict[str, Any] = field(default_factory=dict)
    eot_samples: int = 1
    resubmissions: int = 1
    bpda_iterations: int | None = None
    seed: int = 0
    #: The backward pass inside the attack; None: the one the purifier declares (``PurifierSpec.bpda``).
    bpda: BpdaMode | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        if self.bpda == "approx" and spec.surrogate is None:
            raise ValueError(f"bpda='approx' needs a differentiable approximation; {self.purifier!r} has none")
        if self.bpda == "exact" and spec.bpda != "exact":
            raise ValueError(f"bpda='exact' needs a differentiable purifier; {self.purifier!r} is not")

    @property
    def spec(self) -> PurifierSpec:
        return purifiers.get(self.purifier)

    @property
    def gradient(self) -> BpdaMode:
        """The backward pass the attack uses through the purifier."""
        return self.bpda if self.bpda is not None else self.spec.bpda

    def attack_params(self) -> dict[str, Any]:
        """The purifier's parameters inside the attack: fewer steps where ``bpda_iterations`` says so."""
        spec, params = self.spec, dict(self.params)
        if self.bpda_iterations is not None and spec.iterations_param is not None:
            params[spec.iterations_param] = self.bpda_iterations
        return params

    def describe(self) -> dict[str, Any]:
        """What a result states about the defence it was attacked and judged through."""
        spec = self.spec
        return {
            "purifier": self.purifier,
            "params": dict(self.params),
            "bpda": self.gradient,
            "randomized": spec.randomized,
            "eot_samples": self.eot_samples if spec.randomized else 1,
            "resubmissions": self.resubmissions if spec.randomized else 1,
            "attack_params": self.attack_params(),
        }


def unusable_settings(spec: PurifierSpec, given: Mapping[str, Any]) -> str | None:
    """Why ``given`` adaptive settings cannot mean anything for ``spec`` (None when they can): EOT samples and
    resubmissions only differ for a randomised purifier, ``bpda_iterations`` only bounds an iterative one. Refused
    rather than dropped, so a request never reads as if it had been honoured."""
    for p in ADAPTIVE_PARAMS:
        if given.get(p.name) is None:
            continue
        if p is BPDA_ITERATIONS and spec.iterations_param is None:
            return f"bpda_iterations applies only to an iterative purifier (dip); {spec.name!r} runs in one shot"
        if p in (EOT_SAMPLES, RESUBMISSIONS) and not spec.randomized:
            return (
                f"{p.name} applies only to a randomised purifier (dip); {spec.name!r} is deterministic: every run "
                "gives the same output"
            )
    return None


def resolve_defense(given: Mapping[str, Any] | None) -> Defense | None:
    """A request's defence (``{"method": name, <ADAPTIVE_PARAMS>, <the purifier's parameters>}``, keyword names)
    to a validated ``Defense``; None or ``method == "none"`` is no defence. A ValueError names what is wrong."""
    if not given:
        return None
    rest = dict(given)
    name = rest.pop("method", NO_DEFENSE)
    own = {p.name: p.validate(rest.pop(p.name), label=p.name) for p in ADAPTIVE_PARAMS if rest.get(p.name) is not None}
    for p in ADAPTIVE_PARAMS:
        rest.pop(p.name, None)
    if name == NO_DEFENSE:
        if rest or own:
            raise ValueError(f"defense parameters {sorted([*rest, *own])} need a defense (got defense={name!r})")
        return None
    spec = purifiers.get(name)
    refused = unusable_settings(spec, own)
    if refused:
        raise ValueError(refused)
    params = spec.resolve(rest)
    seed = int(params.pop("seed", 0)) if spec.randomized else 0
    return Defense(
        purifier=name,
        params=params,
        eot_samples=int(own.get("eot_samples", EOT_SAMPLES.default)),
        resubmissions=int(own.get("resubmissions", RESUBMISSIONS.default)),
        bpda_iterations=own.get("bpda_iterations"),
        seed=seed,
    )


def purify_once(
    defense: Defense,
    x: Tensor,
    *,
    seed: int,
    params: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Tensor:
    """One run of the real purifier (``seed`` used where it draws randomness), keeping autograd where it can."""
    spec = defense.spec
    kwargs = dict(defense.params if params is None else params)
    if spec.randomized:
        kwargs["seed"] = seed % _SEED_SPACE
    hooks = {"progress": progress, "should_stop": should_stop}
    return spec.fn(x, **kwargs, **{k: v for k, v in hooks.items() if v is not None}).image


class Defended(nn.Module):
    """``detector(purify(x))`` with a differentiable backward (BPDA) and EOT over the purifier's randomness.

    Each forward pass draws ``eot_samples`` fresh purifier runs (seeds counting up from the defence's) and returns
    the mean of the detector's logits over them. The forward value is always the real purifier's output; only
    the gradient is approximated (a differentiable surrogate's, or the identity) where the purifier is not
    differentiable."""

    def __init__(self, detector: nn.Module, defense: Defense, *, should_stop: StopFn | None = None) -> None:
        super().__init__()
        self.detector = detector
        self.defense = defense
        self.should_stop = should_stop
        self.draws = 0  # purifier runs so far (the next seed is the defence's seed plus this)
        self._params = defense.attack_params()

    @property
    def samples(self) -> int:
        return self.defense.eot_samples if self.defense.spec.randomized else 1

    def purified(self, x: Tensor) -> Tensor:
        """One purifier run on ``x`` whose backward is BPDA's (a surrogate's or the identity) or the purifier's own
        (exact)."""
        seed = self.defense.seed + self.draws
        self.draws += 1
        gradient = self.defense.gradient
        if gradient == "exact":
            return purify_once(self.defense, x, seed=seed, params=self._params, should_stop=self.should_stop)
        # No torch.no_grad() here: an optimising purifier (DIP) trains its own network on the detached input.
        out = purify_once(self.defense, x.detach(), seed=seed, params=self._params, should_stop=self.should_stop)
        out = out.detach().to(x.dtype)
        surrogate = self.defense.spec.surrogate
        if gradient == "approx" and surrogate is not None:
            # The value is the real purifier's output, the gradient w.r.t. x the differentiable approximation's.
            approx = surrogate(x, **self._params)
            return approx + (out - approx).detach()
        # Straight-through: the value is the purifier's output, the gradient w.r.t. x is the identity.
        return x + (out - x).detach()

    def forward(self, x: Tensor) -> Tensor:
        logits = [self.detector(self.purified(x)) for _ in range(self.samples)]
        return torch.stack(logits).mean(dim=0)


@dataclass(frozen=True)
class Judged:
    """The detector's p_fake of each of ``resubmissions`` purifier runs (R x N) on the delivered images."""

    p_fake: Tensor
    runs: int


def judge(
    detector: nn.Module,
    delivered: Tensor,
    defense: Defense,
    *,
    fake_index: int,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Judged:
    """Purify the delivered images as the defender would, ``resubmissions`` times with seeds the attack never
    drew (once for a deterministic purifier: every resubmission would see the same output), and classify each."""
    runs = defense.resubmissions if defense.spec.randomized else 1
    rows = []
    for r in range(runs):
        out = purify_once(
            defense, delivered.detach(), seed=defense.seed + JUDGE_SEED_OFFSET + r, progress=progress,
            should_stop=should_stop,
        ).detach()  # fmt: skip
        with eval_mode(detector), torch.no_grad():
            rows.append(torch.softmax(detector(out.to(delivered.dtype)).float(), dim=1)[:, fake_index])
    return Judged(p_fake=torch.stack(rows), runs=runs)
