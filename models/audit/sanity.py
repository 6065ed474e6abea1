"""The audit's sanity flags, computed (docs/AUDIT.md, "Sanity flags"): signs that the attacks' figures overstate the
detector's robustness. The record's ``unreliable`` is true when any flag is raised, and each flag says why.

- ``randomness``: two forward passes on the same images disagree (a random layer active at inference: gradient
  attacks then need EOT, and one pass's verdict is not the detector's).
- ``black_box_beats_white_box``: Square (score-based, no gradient) fooled images that APGD-CE and FAB could not: the
  gradients mislead (Athalye et al. 2018; AutoAttack's own check).
- ``robustness_rises_with_eps``: fewer images flipped at a larger budget than at a smaller one (L-inf or L2 curve).
- ``bad_gradients``: input gradients that are zero or not finite on some images (masked or shattered gradients).
- ``randomized_or_iterative_defense``: a randomised or iterative purifier is in the loop: RobustBench lists such
  models apart, since a fixed attack budget may not reach their true robustness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from models.attacks.adaptive import Defense
from models.attacks.square import SQUARE
from models.detector import FAKE_INDEX

#: Forward passes that differ by more than this are random; float noise between two identical passes is far below it.
FORWARD_GAP = 1e-5


def flags(
    threats: Sequence[Any], per_threat: dict[str, dict[str, list[Any]]], labels: Tensor, threshold: float,
    *, defense: Defense | None,
) -> list[dict[str, Any]]:  # fmt: skip
    out: list[dict[str, Any]] = []
    sanity = next((per_threat[t.id] for t in threats if t.name == "sanity"), None)
    if sanity is not None:
        out += _randomness_flags([d["forward_gap"] for d in sanity["details"]])
        bad = sum(1 for d in sanity["details"] if d["grad_norm"] is None or d["grad_norm"] == 0)
        if bad:
            out.append(_flag("bad_gradients", bad, f"the input gradient is zero or not finite on {bad} image(s)"))
    curve = sorted((t for t in threats if t.name == "linf_suite"), key=lambda t: t.kwargs["eps"])
    square = 0
    for t in curve:
        square += sum(1 for d in per_threat[t.id]["details"] if d.get("fooled_by") == SQUARE.name)
    if square:
        why = f"Square fooled {square} image(s) that APGD-CE and FAB did not (over all budgets)"
        out.append(_flag("black_box_beats_white_box", square, why))
    l2_curve = sorted((t for t in threats if t.name == "l2_suite"), key=lambda t: t.kwargs["rms"])
    for budgets in (curve, l2_curve):
        flipped = [_wrong(per_threat[t.id]["p_fake"], labels, threshold) for t in budgets]
        for i in range(1, len(budgets)):
            if flipped[i] < flipped[i - 1]:
                why = (f"{flipped[i]} image(s) wrong under {budgets[i].id} but {flipped[i - 1]} under "
                       f"{budgets[i - 1].id}")  # fmt: skip
                out.append(_flag("robustness_rises_with_eps", flipped[i - 1] - flipped[i], why))
    return out + _defense_flags(defense)


def suite_flags(
    attacks: Sequence[dict[str, bool | None]], forward_gaps: Sequence[float], *, defense: Defense | None
) -> list[dict[str, Any]]:
    """The flags a suite's run alone can raise (``deepfake-guard robustness``): randomness (``forward_gaps``, each
    image's p_fake gap between two forward passes), Square fooling images the gradient attacks could not (in the
    cascade Square only runs on those), and a randomised or iterative defence in the loop."""
    out = _randomness_flags(forward_gaps)
    square = sum(1 for a in attacks if a.get(SQUARE.name))
    if square:
        why = f"Square fooled {square} image(s) that the gradient attacks did not"
        out.append(_flag("black_box_beats_white_box", square, why))
    out += _defense_flags(defense)
    return out


def _randomness_flags(gaps: Sequence[float]) -> list[dict[str, Any]]:
    """The ``randomness`` flag, when two forward passes disagree on some image (``gaps``: per image)."""
    random = sum(g > FORWARD_GAP for g in gaps)
    if not random:
        return []
    why = f"two forward passes disagree on {random} image(s) (largest gap {max(gaps):.3g})"
    return [_flag("randomness", random, why)]


def _defense_flags(defense: Defense | None) -> list[dict[str, Any]]:
    if defense is None or not (defense.spec.randomized or defense.spec.iterative):
        return []
    kind = "randomised" if defense.spec.randomized else "iterative"
    why = (f"{defense.purifier} is {kind}: attacked with EOT {defense.eot_samples}, judged through "
           f"{defense.resubmissions} resubmission(s)")  # fmt: skip
    return [_flag("randomized_or_iterative_defense", None, why)]


def _wrong(p_fake: Sequence[float], labels: Tensor, threshold: float) -> int:
    """Images whose verdict at ``threshold`` is not their true label."""
    return sum((float(p) >= threshold) != (int(y) == FAKE_INDEX) for p, y in zip(p_fake, labels.tolist(), strict=True))


def _flag(name: str, images: int | None, reason: str) -> dict[str, Any]:
    return {"flag": name, "images": images, "reason": reason}
