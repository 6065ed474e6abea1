"""The audit's statistics: rates with Wilson intervals, AUROC with a bootstrap interval, and the operating points of
the clean detector (docs/AUDIT.md, "How sure"). An audit reports every rate with its 95 % interval, so a small set says
how little it knows (3 fakes, none evaded: 0 % [0 %, 56 %]), never a bare "0.0 %"."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from models.detector import FAKE_INDEX
from models.evaluation.calibration import auroc, eer, roc_curve, tpr_at_fpr

#: Two-sided 95 %: the normal quantile the Wilson interval uses.
Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (Wilson 1927): sound at 0 and n, unlike the normal one."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exactly 0 at k = 0 and 1 at k = n (rounding would leave the rate a hair outside its own interval).
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def rate(successes: int, n: int) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95"}``; rate and interval None when n is 0."""
    ci = wilson(successes, n)
    return {"k": successes, "n": n, "rate": successes / n if n else None, "ci95": None if ci is None else list(ci)}


def both_classes(labels: Tensor) -> bool:
    return bool((labels == FAKE_INDEX).any() and (labels != FAKE_INDEX).any())


def auroc_of(p_fake: Tensor, labels: Tensor) -> float | None:
    if not both_classes(labels):
        return None
    fpr, tpr, _ = roc_curve(p_fake, labels)
    return auroc(fpr, tpr)


def bootstrap_auroc(
    p_fake: Tensor, labels: Tensor, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES
) -> list[float] | None:
    """The percentile bootstrap's 95 % interval of the AUROC, resampling fakes and reals apart (stratified, so every
    resample has both classes)."""
    if not both_classes(labels):
        return None
    gen = torch.Generator().manual_seed(seed)
    fakes, reals = torch.nonzero(labels == FAKE_INDEX).flatten(), torch.nonzero(labels != FAKE_INDEX).flatten()
    values = []
    for _ in range(resamples):
        f = fakes[torch.randint(len(fakes), (len(fakes),), generator=gen)]
        r = reals[torch.randint(len(reals), (len(reals),), generator=gen)]
        idx = torch.cat([f, r])
        value = auroc_of(p_fake[idx], labels[idx])
        if value is not None:
            values.append(value)
    ordered = sorted(values)
    lo, hi = ordered[int(0.025 * (len(ordered) - 1))], ordered[math.ceil(0.975 * (len(ordered) - 1))]
    return [lo, hi]


def verdict_rates(p_fake: Tensor, labels: Tensor, threshold: float) -> dict[str, Any]:
    """The owner's two rates at the operating threshold: fakes passed as real (evasion) and reals flagged fake (false
    alarms), and the accuracy, each with its interval. Scores compare in float64, as the service compares them."""
    called_fake = p_fake.double() >= threshold
    fake = labels == FAKE_INDEX
    n_fake, n_real = int(fake.sum()), int((~fake).sum())
    evaded = int((fake & ~called_fake).sum())
    alarms = int((~fake & called_fake).sum())
    correct = int((called_fake == fake).sum())
    return {
        "evasion": rate(evaded, n_fake),
        "false_alarms": rate(alarms, n_real),
        "accuracy": rate(correct, n_fake + n_real),
    }


def clean_summary(p_fake: Tensor, labels: Tensor, threshold: float, *, seed: int) -> dict[str, Any]:
    """Everything the audit says of the detector on untouched images: the two rates, accuracy, AUROC with its
    interval, EER, and the TPR at 1 % and 5 % FPR (None where a class is missing)."""
    out = verdict_rates(p_fake, labels, threshold)
    out["auroc"] = auroc_of(p_fake, labels)
    out["auroc_ci95"] = bootstrap_auroc(p_fake, labels, seed=seed)
    if both_classes(labels):
        fpr, tpr, _ = roc_curve(p_fake, labels)
        out["eer"] = eer(fpr, tpr)
        out["tpr_at_fpr_1pct"] = tpr_at_fpr(fpr, tpr, 0.01)
        out["tpr_at_fpr_5pct"] = tpr_at_fpr(fpr, tpr, 0.05)
    else:
        out["eer"] = out["tpr_at_fpr_1pct"] = out["tpr_at_fpr_5pct"] = None
    return out
