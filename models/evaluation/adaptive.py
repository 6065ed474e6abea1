"""R5: does the defence hold? PGD that ignores each purifier beside PGD through it, and the standard suite.

For each registered purifier: the fake-class accuracy of ``purify -> detect`` under PGD crafted on the bare
detector and then purified ("non-adaptive"), and under the same PGD through the purifier (BPDA and EOT,
models/attacks/adaptive.py; "adaptive"). Same eps, same steps, same seed; every adversarial image is delivered as
an 8-bit PNG and judged by the real purifier, a randomised one over ``resubmissions`` runs with seeds the attack
never drew. "worst" counts a fake as caught only if every run catches it, "mean" averages over the runs. And for
each detector the two-class standard suite's robust accuracy (models/evaluation/robustness.py). docs/RESULTS.md
("R5") has the figures and what they mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models import purify as purifiers
from models.attacks.adaptive import Defended, Defense, judge, resolve_defense
from models.attacks.measure import attack_and_measure
from models.attacks.pgd import PGD
from models.detector import FAKE_INDEX
from models.evaluation.robustness import BUDGETS, run_suite
from models.progress import Progress, ProgressFn


def defense_request(
    spec: purifiers.PurifierSpec, *, iterations: int, bpda_iterations: int, eot_samples: int, resubmissions: int
) -> dict[str, Any]:
    """The defence as ``resolve_defense`` takes it: an iterative purifier (DIP) with its fixed stop at
    ``iterations`` (the ``early`` preset), ``bpda_iterations`` of it inside the attack, EOT and resubmissions."""
    req: dict[str, Any] = {"method": spec.name}
    if spec.iterations_param is not None:
        req.update({"preset": "early", spec.iterations_param: iterations, "bpda_iterations": bpda_iterations})
    if spec.randomized:
        req.update({"eot_samples": eot_samples, "resubmissions": resubmissions})
    return req


def _fake_acc(p_fake: Tensor, threshold: float) -> dict[str, float]:
    """Share of fakes called fake over R x N judged scores: by every run (worst) and on average (mean)."""
    called = p_fake >= threshold
    return {"worst": float(called.all(dim=0).float().mean()), "mean": float(called.float().mean())}


def purifier_rows(
    detector: nn.Module,
    fakes: Tensor,
    *,
    purifier_names: Sequence[str],
    eps_values: Sequence[float],
    steps: int,
    iterations: int,
    bpda_iterations: int,
    eot_samples: int,
    resubmissions: int,
    thresholds: Sequence[float] = (0.5,),
    seed: int = 0,
    progress: ProgressFn | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (eps, purifier): fake-class accuracy clean, non-adaptive and adaptive at each threshold, with
    seconds per image. ``fakes`` are fakes the bare detector calls fake. The bare-detector PGD runs once per eps
    and each purifier judges the clean fakes once; ``on_row`` is told each row as it is done (a bench saves it)."""
    y = torch.full((len(fakes),), FAKE_INDEX, dtype=torch.long, device=fakes.device)
    defenses: list[Defense] = []
    for name in purifier_names:
        request = defense_request(
            purifiers.get(name), iterations=iterations, bpda_iterations=bpda_iterations, eot_samples=eot_samples,
            resubmissions=resubmissions,
        )  # fmt: skip
        defense = resolve_defense(request)
        assert defense is not None
        defenses.append(defense)
    clean: dict[str, Tensor] = {}  # judged on first use, so a run cut short has not paid for the later ones
    total, done = len(eps_values) * len(defenses), 0
    rows: list[dict[str, Any]] = []
    for eps in eps_values:
        params = {"eps": eps, "steps": steps, "step_size": eps / 4}
        t = time.perf_counter()
        plain = attack_and_measure(
            PGD.name, detector, fakes, params=params, y=y, generator=torch.Generator().manual_seed(seed)
        )
        plain_s = (time.perf_counter() - t) / len(fakes)
        delivered = torch.stack([r.adv for r in plain])
        for defense in defenses:
            if defense.purifier not in clean:
                clean[defense.purifier] = judge(detector, fakes, defense, fake_index=FAKE_INDEX).p_fake
            t = time.perf_counter()
            non_adaptive = judge(detector, delivered, defense, fake_index=FAKE_INDEX).p_fake
            judge_s = (time.perf_counter() - t) / len(fakes)
            t = time.perf_counter()
            reports = attack_and_measure(
                PGD.name, detector, fakes, params=params, y=y, defense=defense,
                generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            adaptive_s = (time.perf_counter() - t) / len(fakes)
            adaptive = torch.tensor([r.defense["p_fake_after"] for r in reports if r.defense]).T  # R x N
            row = {
                "purifier": defense.purifier,
                "eps": eps,
                "n": len(fakes),
                "defense": defense.describe(),
                "thresholds": {
                    str(th): {
                        "clean": _fake_acc(clean[defense.purifier], th),
                        "non_adaptive": _fake_acc(non_adaptive, th),
                        "adaptive": _fake_acc(adaptive, th),
                    }
                    for th in thresholds
                },
                "non_adaptive_s_per_image": plain_s + judge_s,
                "adaptive_s_per_image": adaptive_s,
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
            done += 1
            if progress is not None:
                progress(Progress(done, total, 0.0, stage="R5 non-adaptive vs adaptive PGD"))
    return rows


def step_costs(detector: nn.Module, x: Tensor, *, iterations: int, bpda_iterations: int) -> dict[str, float]:
    """Seconds of one adaptive PGD step through the iterative purifier (``bpda_iterations`` of its steps per EOT
    sample, EOT 1, 2, 4) and of one of its purification steps, on the same images."""
    spec = next(s for s in purifiers.PURIFIERS_REGISTRY if s.iterations_param is not None)
    out: dict[str, float] = {}
    t = time.perf_counter()
    steps: dict[str, Any] = {str(spec.iterations_param): bpda_iterations}
    spec.fn(x, preset="early", **steps)
    out["purification_step_s"] = (time.perf_counter() - t) / bpda_iterations
    for eot in (1, 2, 4):
        request = defense_request(
            spec, iterations=iterations, bpda_iterations=bpda_iterations, eot_samples=eot, resubmissions=1
        )
        defense = resolve_defense(request)
        assert isinstance(defense, Defense)
        xg = x.clone().requires_grad_(True)
        t = time.perf_counter()
        torch.autograd.grad(Defended(detector, defense)(xg).sum(), xg)
        out[f"adaptive_step_eot{eot}_s"] = time.perf_counter() - t
        out[f"adaptive_step_eot{eot}_over_purification_step"] = (
            out[f"adaptive_step_eot{eot}_s"] / (out["purification_step_s"])
        )
    return out


def suite_rows(
    members: Sequence[Any], x: Tensor, y: Tensor, *, eps: float, budget: str, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The standard suite (APGD-CE + FAB + Square, worst case per image, cascade) on the bare detectors, each judged at
    its operating threshold (``Member.threshold``: its checkpoint's, else 0.5); ``x`` is in a space every detector
    fits itself (``models.evaluation.run``)."""
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        t = time.perf_counter()
        threshold = float(getattr(m, "threshold", 0.5))
        result = run_suite(m.detector, x, y, eps=eps, budget=BUDGETS[budget], seed=seed, threshold=threshold)
        n = len(result.robust)
        out[m.name] = {
            "n": n,
            "threshold": threshold,
            "eps": eps,
            "budget": budget,
            "clean_accuracy": sum(result.clean_correct) / n,
            "robust_accuracy": sum(result.robust) / n,
            "fooled_by": {name: sum(1 for a in result.attacks if a[name]) for name in (result.attacks[0] if n else {})},
            "forward_passes": result.forward_passes,
            "s_per_image": (time.perf_counter() - t) / max(n, 1),
        }
    return out
