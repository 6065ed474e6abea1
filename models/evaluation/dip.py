"""R4: Deep Image Prior purification on a stratified subsample in the paper's categories.

Categories (docs/PAPER.md, DIP table): unperturbed real, unperturbed fake, and the attacked fakes split by
{BB, WB} x {FGSM, CW} x {fooled, not fooled} for the detector under test. Up to ``dip_per_category`` images are
drawn from each (a seeded draw); a category with fewer candidates keeps what it has and the counts say so.

One ``paper``-preset DIP run (fixed stop) purifies every sampled image with snapshots at several iterations:
that gives the sensitivity to the stop iteration without rerunning, and the threshold is swept on the same
outputs. The label-free stop (``default`` preset, ES-WMV) is a second run on the same images.

Raw outputs: ``dip_purify`` returns the EMA of the outputs (ema = 0.99), and so do its snapshots. The raw
output of step ``r`` follows exactly from two consecutive snapshots, ``ema_r = e * ema_{r-1} + (1 - e) * out_r``,
whenever step ``r`` is not a backtracking check (which may keep ``ema_r = ema_{r-1}``); ``raw_step`` picks
such an ``r`` next to each requested iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from models.attacks import FGSM
from models.detector import FAKE_INDEX, REAL_INDEX
from models.evaluation.attacks import AttackRun, delivered
from models.evaluation.clean import Member, bb_source, p_fake_of, threshold_metrics
from models.evaluation.config import EvalConfig
from models.progress import ProgressFn
from models.purify import PRESETS, dip_purify

CLEAN_CATEGORIES = ("real", "fake")


def raw_step(iteration: int, backtrack_every: int) -> int:
    """A step ``r <= iteration`` (and >= 2) that is no backtracking check, so ``out_r`` is recoverable."""
    r = iteration
    while r % backtrack_every == 0 or r < 2:
        r = r - 1 if r > 2 else r + 1
    return r


def raw_from_ema(ema_now: Tensor, ema_before: Tensor, ema: float) -> Tensor:
    return ((ema_now - ema * ema_before) / (1.0 - ema)).clamp(0, 1)


@dataclass
class Subsample:
    images: Tensor
    labels: Tensor
    categories: list[str]
    index: list[int]  # index into the attacked subsample
    available: dict[str, int] = field(default_factory=dict)  # candidates per category before sampling


def categories(
    target: Member,
    members: list[Member],
    x: Tensor,
    y: Tensor,
    run: AttackRun,
    config: EvalConfig,
    *,
    device: torch.device,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Category name -> (candidate indices into ``x``, images as the detector receives them)."""
    fake = torch.nonzero(y == FAKE_INDEX).flatten()
    real = torch.nonzero(y == REAL_INDEX).flatten()
    out: dict[str, tuple[Tensor, Tensor]] = {"real": (real, x[real]), "fake": (fake, x[fake])}
    cut = target.threshold  # its operating threshold: "caught" and "fooled" as /detect would say them
    caught = p_fake_of(target.detector, x[fake], batch_size=config.batch_size, device=device) >= cut
    for setting in ("BB", "WB"):
        source = target if setting == "WB" else bb_source(target, members)
        for attack in (FGSM.name, config.dip_cw):
            label = "FGSM" if attack == FGSM.name else "CW"
            if source is None:
                out[f"{setting} {label} fooled"] = out[f"{setting} {label} not fooled"] = (fake[:0], x[:0])
                continue
            adv = delivered(run.crafted[(attack, source.name)].adv[fake], config.dip_delivery)
            after = p_fake_of(target.detector, adv, batch_size=config.batch_size, device=device) >= cut
            # "Fooled" means the attack flipped a fake the detector caught; a fake it missed even clean is
            # no success of the attack and is left out (counted, never sampled).
            fooled, missed = caught & ~after, ~caught & ~after
            out[f"{setting} {label} fooled"] = (fake[fooled], adv[fooled])
            out[f"{setting} {label} not fooled"] = (fake[after], adv[after])
            out[f"{setting} {label} missed before the attack (left out)"] = (fake[missed], adv[missed][:0])
    return out


def stratified(pool: dict[str, tuple[Tensor, Tensor]], per_category: int, *, seed: int) -> Subsample:
    gen = torch.Generator().manual_seed(seed)
    images, labels, cats, index = [], [], [], []
    available = {}
    for name, (idx, imgs) in pool.items():
        available[name] = int(idx.numel())
        if imgs.shape[0] == 0:  # empty, or a category that is counted but never purified
            continue
        pick = torch.randperm(idx.numel(), generator=gen)[:per_category].sort().values
        images.append(imgs[pick])
        labels += [REAL_INDEX if name == "real" else FAKE_INDEX] * len(pick)
        cats += [name] * len(pick)
        index += idx[pick].tolist()
    return Subsample(
        images=torch.cat(images),
        labels=torch.tensor(labels, dtype=torch.long),
        categories=cats,
        index=index,
        available=available,
    )


def _per_category(correct: Tensor, cats: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in dict.fromkeys(cats):
        mask = torch.tensor([c == name for c in cats])
        out[name] = float(correct[mask].float().mean()) if bool(mask.any()) else None
    return out


def _summary(p: Tensor, sample: Subsample, config: EvalConfig) -> dict[str, Any]:
    """Metrics at each threshold, per-category accuracy, and the paper's restored / kept fractions."""
    by_t: dict[str, Any] = {}
    fooled = torch.tensor([is_fooled(c) for c in sample.categories])
    for t in config.dip_thresholds:
        correct = (p >= t) == (sample.labels == FAKE_INDEX)
        by_t[str(t)] = {
            **threshold_metrics(p, sample.labels, t),
            "per_category": _per_category(correct, sample.categories),
            "restored": float(correct[fooled].float().mean()) if bool(fooled.any()) else None,
            "kept": float(correct[~fooled].float().mean()) if bool((~fooled).any()) else None,
        }
    return {"thresholds": by_t, "mean_p_fake": _mean_by_group(p, sample.categories)}


def is_fooled(category: str) -> bool:
    """An attacked-fake category whose attack flipped the verdict ("WB FGSM fooled", not "... not fooled")."""
    return category.endswith(" fooled") and not category.endswith(" not fooled")


GROUPS = ("real", "fake", "fooled fakes", "not-fooled fakes")


def _group(category: str) -> str:
    if category in CLEAN_CATEGORIES:
        return category
    return "fooled fakes" if is_fooled(category) else "not-fooled fakes"


def _mean_by_group(p: Tensor, cats: list[str]) -> dict[str, float | None]:
    groups = [_group(c) for c in cats]
    out: dict[str, float | None] = {}
    for g in GROUPS:
        mask = torch.tensor([x == g for x in groups])
        out[g] = float(p[mask].mean()) if bool(mask.any()) else None
    return out


def run_dip(
    target: Member,
    members: list[Member],
    x: Tensor,
    y: Tensor,
    run: AttackRun,
    config: EvalConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    pool = categories(target, members, x, y, run, config, device=device)
    sample = stratified(pool, config.dip_per_category, seed=config.seed)
    result: dict[str, Any] = {
        "detector": target.name,
        "delivery": config.dip_delivery,
        "cw_attack": config.dip_cw,
        "counts": {
            name: {"available": sample.available[name], "sampled": sample.categories.count(name)} for name in pool
        },
        "n": len(sample.categories),
    }
    if not sample.categories:
        return result

    def p_of(images: Tensor) -> Tensor:
        return p_fake_of(target.detector, images, batch_size=config.batch_size, device=device)

    result["no_defence"] = _summary(p_of(sample.images), sample, config)

    preset = PRESETS["paper"]
    raw_steps = {s: raw_step(s, preset.backtrack_every) for s in config.dip_snapshots}
    wanted = set(config.dip_snapshots) | set(raw_steps.values()) | {r - 1 for r in raw_steps.values()}
    fixed = dip_purify(
        sample.images,
        preset="paper",
        max_iterations=config.dip_iterations,
        stop="fixed",
        seed=config.seed,
        device=device,
        progress=progress,
        snapshots=tuple(sorted(wanted)),
    )
    curve = []
    for s in config.dip_snapshots:
        r = raw_steps[s]
        raw = raw_from_ema(fixed.snapshots[r], fixed.snapshots[r - 1], preset.ema)
        curve.append(
            {
                "iteration": s,
                "ema": _summary(p_of(fixed.snapshots[s]), sample, config),
                "raw_iteration": r,
                "raw": _summary(p_of(raw), sample, config),
            }
        )
    result["fixed"] = {
        "preset": "paper",
        "iterations": config.dip_iterations,
        "seconds": fixed.seconds,
        "seconds_per_image": fixed.seconds / len(sample.categories),
        "psnr_to_input": {str(k): v for k, v in fixed.psnr_trace.items() if k in config.dip_snapshots},
        "curve": curve,
    }
    if config.dip_auto:
        auto = dip_purify(
            sample.images,
            preset="default",
            max_iterations=config.dip_auto_cap,
            stop="auto",
            seed=config.seed,
            device=device,
            progress=progress,
        )
        result["auto"] = {
            "preset": "default",
            "cap": config.dip_auto_cap,
            "stopped_by": auto.stopped_by,
            "iterations": list(auto.iterations),
            "seconds": auto.seconds,
            "seconds_per_image": auto.seconds / len(sample.categories),
            **_summary(p_of(auto.image), sample, config),
        }
    result["categories"] = sample.categories
    result["subsample_index"] = sample.index
    return result
