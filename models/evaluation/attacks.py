"""R2 (and the attack half of R3): fake-class accuracy under FGSM and CW-L2, white-box and black-box.

Each attack is crafted once per detector (the *source*) on the attacked subsample, untargeted on the true
label as in the paper, then judged by every detector that needs it: the source itself (white-box, WB) and
each detector whose black-box (BB) source it is (``clean.bb_source``: transfer from the other architecture).
Judging happens after each delivery: ``float`` (the crafted tensor, no file), ``png`` (8-bit rounding) and
``jpeg75`` (rounding then JPEG quality 75, what the paper evaluated; ``models.attacks.measure.deliver``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.attacks import registry
from models.attacks.measure import deliver
from models.detector import FAKE_INDEX, REAL_INDEX, at_threshold
from models.evaluation.clean import Member, bb_source, p_fake_of
from models.evaluation.config import EvalConfig
from models.images import psnr
from models.progress import Progress, ProgressFn


@dataclass
class Crafted:
    attack: str
    source: str
    adv: Tensor  # N x 3 x H x W float, on the CPU, as the attack returned it
    seconds_per_image: float


def craft(
    member: Member,
    attack: str,
    x: Tensor,
    y: Tensor,
    config: EvalConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> Crafted:
    """Run ``attack`` on ``member`` over ``x`` in batches; wall time per image is part of the result."""
    method, params = config.attack(attack)
    spec = registry.get(method)
    params = spec.resolve(params)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    out = []
    started = time.perf_counter()
    for i in range(0, x.shape[0], config.batch_size):
        xb, yb = x[i : i + config.batch_size].to(device), y[i : i + config.batch_size].to(device)
        adv = spec.run(at_threshold(member.detector, member.threshold), xb, yb, params, generator=gen).adv
        out.append(adv.detach().cpu())
        if progress is not None:
            progress(
                Progress(min(i + config.batch_size, x.shape[0]), x.shape[0], 0.0, stage=f"{attack} on {member.name}")
            )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return Crafted(attack=attack, source=member.name, adv=torch.cat(out), seconds_per_image=seconds / max(len(x), 1))


def delivered(adv: Tensor, delivery: str) -> Tensor:
    """The image the target sees: the float tensor itself, or the decoded 8-bit PNG / JPEG-75 file."""
    return adv if delivery == "float" else deliver(adv, delivery)[0]


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


def _mean(mask: Tensor) -> float | None:
    return float(mask.float().mean()) if mask.numel() else None


def judge(
    x: Tensor, y: Tensor, adv: Tensor, p_clean: Tensor, p_after: Tensor, *, threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy and attack-success numbers for one (attack, source, target, delivery).

    ``success_rate`` is over the fakes the target caught before the attack; perturbation norms are medians
    over the fakes whose attack succeeded on this target (None when none did).
    """
    fake, real = y == FAKE_INDEX, y == REAL_INDEX
    said_fake_before, said_fake_after = p_clean >= threshold, p_after >= threshold
    caught = fake & said_fake_before
    fooled = caught & ~said_fake_after
    delta = (adv - x).flatten(1)
    l2, linf, db = delta.norm(dim=1), delta.abs().amax(dim=1), psnr(x, adv)
    return {
        "n_fake": int(fake.sum()),
        "n_real": int(real.sum()),
        "clean_fake_accuracy": _mean(said_fake_before[fake]),
        "fake_accuracy": _mean(said_fake_after[fake]),
        "clean_real_accuracy": _mean(~said_fake_before[real]),
        "real_accuracy": _mean(~said_fake_after[real]),
        "caught_before": int(caught.sum()),
        "fooled": int(fooled.sum()),
        "success_rate": int(fooled.sum()) / int(caught.sum()) if int(caught.sum()) else None,
        "median_l2": _median(l2[fooled].tolist()),
        "median_linf": _median(linf[fooled].tolist()),
        "median_psnr": _median(db[fooled].tolist()),
    }


@dataclass
class AttackRun:
    rows: list[dict[str, Any]]
    crafted: dict[tuple[str, str], Crafted]  # (attack, source name) -> crafted
    p_clean: dict[str, Tensor]  # member name -> p_fake on the clean subsample


def pairs(members: list[Member]) -> list[tuple[Member, Member, str]]:
    """``(source, target, setting)`` for every target: WB on itself, BB from ``bb_source`` if there is one."""
    out = []
    for target in members:
        out.append((target, target, "WB"))
        source = bb_source(target, members)
        if source is not None:
            out.append((source, target, "BB"))
    return out


def run_attacks(
    members: list[Member],
    x: Tensor,
    y: Tensor,
    config: EvalConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> AttackRun:
    p_clean = {m.name: p_fake_of(m.detector, x, batch_size=config.batch_size, device=device) for m in members}
    todo = pairs(members)
    sources = {s.name: s for s, _, _ in todo}
    crafted: dict[tuple[str, str], Crafted] = {}
    for attack in config.attack_names:
        for source in sources.values():
            crafted[(attack, source.name)] = craft(source, attack, x, y, config, device=device, progress=progress)
    rows = []
    for attack in config.attack_names:
        method = config.attack(attack)[0]
        for source, target, setting in todo:
            c = crafted[(attack, source.name)]
            for delivery in config.deliveries:
                adv = delivered(c.adv, delivery)
                p_after = p_fake_of(target.detector, adv, batch_size=config.batch_size, device=device)
                rows.append(
                    {
                        "attack": attack,
                        "method": method,
                        "source": source.name,
                        "target": target.name,
                        "setting": setting,
                        "delivery": delivery,
                        "threshold": target.threshold,
                        **judge(x, y, adv, p_clean[target.name], p_after, threshold=target.threshold),
                        "seconds_per_image": c.seconds_per_image,
                    }
                )
    return AttackRun(rows=rows, crafted=crafted, p_clean=p_clean)


def find(rows: list[dict[str, Any]], **where: Any) -> dict[str, Any] | None:
    """The first row matching every ``key=value``."""
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def summary_table(
    detectors: list[dict[str, Any]], rows: list[dict[str, Any]], attack_names: Sequence[str], delivery: str
) -> list[dict[str, Any]]:
    """The paper's layout: per detector, fake-class accuracy clean and under each (attack, setting)."""
    table = []
    for d in detectors:
        entry: dict[str, Any] = {"detector": d["name"], "role": d["role"], "lambda": d["lipschitz_lambda"]}
        wb = find(rows, target=d["name"], setting="WB", delivery=delivery)
        entry["clean"] = wb["clean_fake_accuracy"] if wb else None
        for attack in attack_names:
            for setting in ("BB", "WB"):
                row = find(rows, attack=attack, target=d["name"], setting=setting, delivery=delivery)
                entry[f"{attack} {setting}"] = row["fake_accuracy"] if row else None
        table.append(entry)
    return table
