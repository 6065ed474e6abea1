"""Calibration and operating points: the ROC curve, AUROC, EER, TPR at a stated FPR, and a threshold fitted on a
validation split for a target false-positive rate (docs/RESULTS.md, "Operating points").

"Positive" is fake (a detection), so the false-positive rate is the share of real images called fake. The
argmax threshold 0.5 is only one point of the curve; a service that must not flag more than, say, 1 % of real
images needs the threshold fitted on held-out reals, and the test split then tells what that threshold gives.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.detector import FAKE_INDEX

#: The FPRs at which the TPR is reported.
REPORTED_FPRS: tuple[float, ...] = (0.01, 0.05)


def roc_curve(p_fake: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(fpr, tpr, thresholds)``: one point per distinct score, from the strictest threshold (nothing called fake,
    (0, 0)) to the most lenient ((1, 1)); "fake" means ``p_fake >= threshold``. Needs both classes."""
    p, y = p_fake.double().flatten(), labels.flatten()
    pos, neg = int((y == FAKE_INDEX).sum()), int((y != FAKE_INDEX).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"a ROC curve needs fakes and reals, got {pos} fakes and {neg} reals")
    order = torch.argsort(p, descending=True, stable=True)
    p, y = p[order], y[order]
    is_pos = (y == FAKE_INDEX).double()
    tp, fp = torch.cumsum(is_pos, 0), torch.cumsum(1 - is_pos, 0)
    last = torch.ones_like(p, dtype=torch.bool)  # keep the last of each run of tied scores
    last[:-1] = p[1:] != p[:-1]
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last] / pos])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last] / neg])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), p[last]])
    return fpr, tpr, thresholds


def auroc(fpr: Tensor, tpr: Tensor) -> float:
    """Area under the curve by the trapezoid rule (ties count one half, as the Mann-Whitney statistic)."""
    return float(torch.trapezoid(tpr, fpr))


def eer(fpr: Tensor, tpr: Tensor) -> float:
    """The equal error rate: where the FPR equals the miss rate 1 - TPR, linearly interpolated on the curve."""
    fnr = 1 - tpr
    diff = fpr - fnr  # rises from -1 to +1 along the curve
    i = int(torch.nonzero(diff >= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    d0, d1 = float(diff[i - 1]), float(diff[i])
    w = -d0 / (d1 - d0)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(fpr: Tensor, tpr: Tensor, target: float) -> float:
    """The highest TPR among the curve's points whose FPR is at most ``target`` (no interpolation: an achievable
    operating point)."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max())


def fit_threshold(p_fake: Tensor, labels: Tensor, target_fpr: float) -> float:
    """The lowest threshold whose FPR on these images is at most ``target_fpr`` (so the most fakes are caught
    under that constraint). Fit it on validation images, then measure it on test images. Thresholds live in
    [0, 1]: when reals score exactly 1.0 (a saturated softmax) no threshold keeps them out, the target is not
    reachable, and the FPR the record states (``rates_at``) says so."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr!r}")
    fpr, _, thresholds = roc_curve(p_fake, labels)
    ok = torch.nonzero(fpr <= target_fpr + 1e-12).flatten()
    t = float(thresholds[ok[-1]])
    # inf (nothing called fake) is not a usable threshold: just above the highest score does the same. "Just above"
    # in float32, the precision scores have: a float64 step would round back onto the score in float32 arithmetic.
    if math.isinf(t):
        above = np.nextafter(np.float32(p_fake.max()), np.float32(np.inf), dtype=np.float32)
        return min(1.0, float(above))
    return t


def check_supported(labels: Tensor, target_fpr: float) -> None:
    """A ValueError when the reals among ``labels`` are too few to fit a threshold for ``target_fpr``: with fewer
    than ``1 / target_fpr`` of them the only FPR below the target is 0, the fitted threshold sits above every real's
    score, and the rate the record states says nothing about new images."""
    reals = int((labels != FAKE_INDEX).sum())
    if target_fpr > 0 and reals < math.ceil(1 / target_fpr - 1e-9):
        need = math.ceil(1 / target_fpr - 1e-9)
        raise ValueError(
            f"the validation images hold {reals} real image(s); fitting a threshold for a {target_fpr:.3g} false-"
            f"positive rate needs at least {need} (1 / target FPR), more for a stable one: add reals or raise the "
            "target FPR"
        )


def operating_points(p_fake: Tensor, labels: Tensor) -> dict[str, Any]:
    """AUROC, EER and the TPR at each of ``REPORTED_FPRS``."""
    fpr, tpr, _ = roc_curve(p_fake, labels)
    return {
        "auroc": auroc(fpr, tpr),
        "eer": eer(fpr, tpr),
        **{f"tpr_at_fpr_{round(f * 100)}pct": tpr_at_fpr(fpr, tpr, f) for f in REPORTED_FPRS},
        "n": int(labels.numel()),
    }


def rates_at(p_fake: Tensor, labels: Tensor, threshold: float) -> dict[str, float]:
    """TPR and FPR when "fake" means ``p_fake >= threshold``, compared in float64 as the service compares a score
    with its threshold (a float32 comparison would round the threshold onto a score)."""
    called = p_fake.double() >= threshold
    fake = labels == FAKE_INDEX
    return {"tpr": float(called[fake].double().mean()), "fpr": float(called[~fake].double().mean())}


def calibrate(
    val_p: Tensor, val_y: Tensor, test_p: Tensor | None, test_y: Tensor | None, *, target_fpr: float
) -> dict[str, Any]:
    """The record a checkpoint keeps (``metrics.calibration``): the threshold fitted on validation images for
    ``target_fpr``, the rates it gives there and (when given) on test images, and the test operating points.
    Refuses validation sets with too few reals for the target (``check_supported``)."""
    check_supported(val_y, target_fpr)
    threshold = fit_threshold(val_p, val_y, target_fpr)
    out: dict[str, Any] = {
        "threshold": threshold,
        "target_fpr": target_fpr,
        "fitted_on": {"n": int(val_y.numel()), **rates_at(val_p, val_y, threshold)},
    }
    if test_p is not None and test_y is not None:
        out["test"] = {**operating_points(test_p, test_y), "at_threshold": rates_at(test_p, test_y, threshold)}
    return out


def folder_scores(
    detector: nn.Module, root: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """p_fake and the label of every image of an ImageFolder (``fake/``, ``real/``), each at its own size (the
    detector fits it as it serves it)."""
    from models.data.folder import list_images, read_image

    items = list_images(root)
    if not items:
        raise ValueError(f"{root} holds no images")
    scores = []
    with torch.no_grad():
        for path, _ in items:
            logits = detector(read_image(path)[None].to(device)).float()
            scores.append(float(torch.softmax(logits, dim=1)[0, FAKE_INDEX]))
    return torch.tensor(scores), torch.tensor([label for _, label in items])


def roc_png(curves: dict[str, tuple[Tensor, Tensor]], path: str | Path) -> Path:
    """The ROC curves ``{name: (fpr, tpr)}`` as one PNG (log-free axes, the chance diagonal dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{name} (AUROC {auroc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    for f in REPORTED_FPRS:
        ax.axvline(f, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("false-positive rate (reals called fake)")
    ax.set_ylabel("true-positive rate (fakes caught)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
