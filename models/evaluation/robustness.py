"""The two-class standard attack suite and its RobustBench-shaped record (docs/ATTACKS.md, "Standard suite").

AutoAttack (Croce & Hein 2020) runs APGD-CE, APGD-T (DLR), FAB-T and Square. The DLR loss needs a third class
(its denominator is ``Z_pi1 - Z_pi3``) and targeted variants have one target with two classes, so the suite here
is APGD-CE + FAB + Square, worst case per image: an image is robust when it is classified correctly and no attack
of the suite fools the detector on the delivered 8-bit file. As in AutoAttack, each attack only runs on the images
that are still robust (a cascade). With a ``defense`` every attack is adaptive (models/attacks/adaptive.py) and
judged through its resubmissions; a clean image counts as correct only if every resubmission classifies it so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks.adaptive import Defense, judge
from models.attacks.apgd import APGD_CE, APGD_CE_L2
from models.attacks.fab import FAB, FAB_L2
from models.attacks.measure import attack_and_measure
from models.attacks.registry import AttackSpec
from models.attacks.square import SQUARE
from models.detector import DEFAULT_THRESHOLD, FAKE_INDEX, verdict

#: The suite, in the order it runs: the cheap gradient attack first, the score-based check on gradient masking last.
SUITE: tuple[AttackSpec, ...] = (APGD_CE, FAB, SQUARE)
#: The L2 suite: APGD-CE and FAB in L2 (eps: the whole perturbation's L2 norm; docs/ATTACKS.md, "L2 budgets").
SUITE_L2: tuple[AttackSpec, ...] = (APGD_CE_L2, FAB_L2)
#: The suite of each threat model, by the name ``robustness --norm`` takes.
SUITES: dict[str, tuple[AttackSpec, ...]] = {"linf": SUITE, "l2": SUITE_L2}

#: Budgets: AutoAttack's standard version (100 APGD steps, FAB 100 steps, 5,000 Square queries) and a small one for
#: CI and CPU runs; the L2 attacks take the same steps as their L-inf twins.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "standard": {APGD_CE.name: {"steps": 100}, FAB.name: {"steps": 100}, SQUARE.name: {"queries": 5000},
                 APGD_CE_L2.name: {"steps": 100}, FAB_L2.name: {"steps": 100}},
    "quick": {APGD_CE.name: {"steps": 10}, FAB.name: {"steps": 10}, SQUARE.name: {"queries": 100},
              APGD_CE_L2.name: {"steps": 10}, FAB_L2.name: {"steps": 10}},
}  # fmt: skip


class CountingModel(nn.Module):
    """Counts the images that go through ``inner`` (forward passes, one per image)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += int(x.shape[0])
        out: Tensor = self.inner(x)
        return out


@dataclass
class SuiteResult:
    """Per image: the bare detector's clean p_fake, correct when clean, robust after the suite, and which attacks
    fooled it (None: not run). ``p_fake_after``: the p_fake the defender is left with, the clean one for an image
    already wrong, the fooling file's for one the suite fooled, else the most adverse of the attempts (lowest for a
    fake, highest for a real; through a defence, over its resubmissions). ``fooled_by``: "clean", an attack's name,
    or None; ``distance``: the fooling file's distance to the image in the suite's norm; ``delivered``: the fooling
    files (3 x H x W, on CPU) by image position."""

    clean_p_fake: list[float]
    clean_correct: list[bool]
    robust: list[bool]
    attacks: list[dict[str, bool | None]]
    forward_passes: int
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    p_fake_after: list[float] = field(default_factory=list)
    fooled_by: list[str | None] = field(default_factory=list)
    distance: list[float | None] = field(default_factory=list)
    delivered: dict[int, Tensor] = field(default_factory=dict)


def _correct(
    detector: nn.Module, x: Tensor, y: Tensor, defense: Defense | None, threshold: float
) -> tuple[Tensor, Tensor]:
    """The bare detector's clean p_fake, and whether each image is judged correctly at ``threshold`` (through every
    resubmission of the defence, when there is one)."""
    with torch.no_grad():
        p_fake = torch.softmax(detector(x).float(), dim=1)[:, FAKE_INDEX]
    rows = p_fake[None] if defense is None else judge(detector, x, defense, fake_index=FAKE_INDEX).p_fake
    return p_fake, (verdict(rows, threshold) == y[None]).all(dim=0)


def run_suite(
    detector: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    budget: Mapping[str, Mapping[str, Any]],
    defense: Defense | None = None,
    save_format: str = "png",
    seed: int = 0,
    on_attack: Callable[[str, int], None] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    suite: Sequence[AttackSpec] = SUITE,
) -> SuiteResult:
    """Run ``suite`` (the L-inf one unless given) on ``x`` with true labels ``y`` at budget ``eps``, every verdict at
    ``threshold`` (the detector's operating threshold); ``on_attack(name, images)`` is told before each attack (a
    progress bar's hook)."""
    counted = CountingModel(detector).eval()
    n = len(x)
    p_clean, correct = _correct(counted, x, y, defense, threshold)
    robust = correct.clone()
    per_image: list[dict[str, bool | None]] = [{spec.name: None for spec in suite} for _ in range(n)]
    after = p_clean.tolist()
    fooled_by: list[str | None] = [None if ok else "clean" for ok in correct.tolist()]
    distance: list[float | None] = [None if ok else 0.0 for ok in correct.tolist()]
    delivered: dict[int, Tensor] = {}
    used: dict[str, dict[str, Any]] = {}
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for spec in suite:
        params = {"eps": eps, **budget.get(spec.name, {})}
        used[spec.name] = spec.resolve(params)
        left = robust.nonzero().squeeze(1)
        if on_attack is not None:
            on_attack(spec.name, int(left.numel()))
        if left.numel() == 0:
            continue
        reports = attack_and_measure(
            spec.name, counted, x[left], params=params, y=y[left], save_format=save_format, defense=defense,
            generator=gen, threshold=threshold,
        )  # fmt: skip
        for i, r in zip(left.tolist(), reports, strict=True):
            per_image[i][spec.name] = r.success
            runs = (r.defense or {}).get("p_fake_after") or [r.p_fake_after]
            adverse = min if int(y[i]) == FAKE_INDEX else max
            if r.success:
                robust[i] = False
                after[i], fooled_by[i], delivered[i] = adverse(runs), spec.name, r.adv
                distance[i] = r.l2 if spec.norm == "l2" else r.linf
            else:
                after[i] = adverse([after[i], *runs])
    return SuiteResult(
        clean_p_fake=p_clean.tolist(),
        clean_correct=correct.tolist(),
        robust=robust.tolist(),
        attacks=per_image,
        forward_passes=counted.images,
        params=used,
        p_fake_after=after,
        fooled_by=fooled_by,
        distance=distance,
        delivered=delivered,
    )
