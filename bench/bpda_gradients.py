"""Which gradient should an adaptive attack use through each purifier? The same attack (PGD, APGD-CE) through the
real purifier with each candidate backward pass (BPDA identity; the differentiable approximation of
models/purify/differentiable.py; the exact gradient of the median filter), beside the transfer attack crafted on the
bare detector, judged as the defender sees the delivered 8-bit PNG. Also the approximation's fidelity: PSNR of the
differentiable JPEG (bit depth) against PIL's. JSON out (docs/ATTACKS.md, "Which gradient for which purifier";
docs/RESULTS.md, "R5"). Needs torch only (never imports app/).

    python bench/bpda_gradients.py --n 32 --eps 1/255 2/255 --json docs/results/bpda-gradients-cpu.json

``--suite`` runs the two-class standard suite (APGD-CE, FAB, Square; models/evaluation/robustness.py) through each
purifier with each gradient instead of the single attacks:

    python bench/bpda_gradients.py --suite --n 16 --eps 2/255 --purifiers jpeg --json docs/results/bpda-suite-cpu.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint
from models.attacks.adaptive import BpdaMode, Defense, judge
from models.attacks.apgd import APGD_CE
from models.attacks.measure import attack_and_measure
from models.attacks.pgd import PGD
from models.checkpoint import DEMO_CHECKPOINTS
from models.data.folder import list_images, read_image
from models.detector import FAKE_INDEX
from models.evaluation.robustness import BUDGETS, run_suite
from models.images import psnr
from models.purify.simple import BITDEPTH, JPEG, MEDIAN

#: The backward passes compared per purifier: BPDA identity against what else it has.
CANDIDATES: dict[str, tuple[BpdaMode, ...]] = {
    JPEG.name: ("identity", "approx"),
    MEDIAN.name: ("identity", "exact"),
    BITDEPTH.name: ("identity", "approx"),
}


def fidelity(x: torch.Tensor, defense: Defense) -> dict[str, float] | None:
    """PSNR (dB) of the differentiable approximation against the real purifier, and of the input against it."""
    spec = defense.spec
    if spec.surrogate is None:
        return None
    real = spec.fn(x, **defense.params).image
    with torch.no_grad():
        approx = spec.surrogate(x, **defense.params)
    p, p_input = psnr(real, approx), psnr(real, x)
    finite = p[torch.isfinite(p)]
    return {
        "approx_vs_real_psnr_median": float(p.median()),
        "approx_vs_real_psnr_min": float(finite.min()) if finite.numel() else float("inf"),
        "approx_equals_real_share": float((~torch.isfinite(p)).float().mean()),
        "input_vs_real_psnr_median": float(p_input.median()),
        "mean_abs_diff_levels": float(((real - approx).abs() * 255).mean()),
    }


def fake_pool(data: Path, n: int) -> torch.Tensor:
    """The first ``3 n`` fakes of ``data`` (fake/ and real/), from which each detector takes the first ``n`` it calls
    fake (``Detector.called_fake``, threshold 0.5)."""
    fakes = [p for p, label in list_images(data) if label == FAKE_INDEX]
    return torch.stack([read_image(p) for p in fakes[: 3 * n]])


def report_head(args: argparse.Namespace) -> dict[str, Any]:
    """What every report of these benches states before its rows: the machine, torch, threads, threshold, args."""
    return {
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "threshold": 0.5,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }


def suite_row(
    report: dict[str, Any],
    det: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    detector: str,
    purifier: str,
    params: dict[str, Any],
    given: str,
    budget: str,
) -> None:
    """The suite's robust accuracy through ``purifier`` with each candidate gradient, and which attack won where."""
    row: dict[str, Any] = {"detector": detector, "purifier": purifier, "params": params, "eps_given": given,
                           "budget": budget, "n": len(x), "robust": {}, "fooled_by": {}, "seconds": {}}  # fmt: skip
    survivors: dict[str, set[int]] = {}
    for gradient in CANDIDATES[purifier]:
        t = time.perf_counter()
        defense = Defense(purifier=purifier, params=params, bpda=gradient)
        result = run_suite(det, x, y, eps=float(Fraction(given)), budget=BUDGETS[budget], defense=defense)
        row["robust"][gradient] = sum(result.robust) / len(x)
        row["fooled_by"][gradient] = {a: sum(1 for r in result.attacks if r[a]) for a in result.attacks[0]}
        row["seconds"][gradient] = time.perf_counter() - t
        survivors[gradient] = {i for i, r in enumerate(result.robust) if r}
    first, *rest = survivors.values()
    row["survivors_nested"] = all(first >= other or first <= other for other in rest)
    row["survivors"] = {g: sorted(v) for g, v in survivors.items()}
    print(f"{detector:<14}{purifier:<9}suite@{given:<10}robust " + "  ".join(f"{g} {v:.3f}" for g, v in
                                                                           row["robust"].items()))  # fmt: skip
    report.setdefault("suite_rows", []).append(row)


def demo_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments these benches share: the detectors, the demo data and how many of its fakes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", type=Path, default=[DEMO_CHECKPOINTS / "demo-resnet18",
                                                                     DEMO_CHECKPOINTS / "demo-vgg16"])  # fmt: skip
    ap.add_argument("--data", type=Path, default=Path("data/demo/test"), help="folder with fake/ and real/")
    ap.add_argument("--n", type=int, default=32, help="test fakes each detector calls fake")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = demo_parser(__doc__)
    ap.add_argument("--eps", nargs="+", default=["2/255"])
    ap.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (step size eps / 4), as R5")
    ap.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE steps (AutoAttack's standard budget)")
    ap.add_argument("--purifiers", nargs="+", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    ap.add_argument("--quality", type=int, default=75, help="JPEG quality of the jpeg purifier")
    ap.add_argument("--bits", type=int, default=5, help="bits of the bitdepth purifier")
    ap.add_argument("--suite", action="store_true", help="the standard suite instead of PGD and APGD-CE alone")
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="standard", help="the suite's budget (--suite)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n < 1 or args.pgd_steps < 1 or args.apgd_steps < 1:
        ap.error("--n, --pgd-steps and --apgd-steps must be >= 1")
    torch.set_num_threads(args.threads)
    own = {JPEG.name: {"quality": args.quality}, MEDIAN.name: {"kernel_size": 3}, BITDEPTH.name: {"bits": args.bits}}
    attacks = {}
    for given in args.eps:
        eps = float(Fraction(given))
        attacks[f"{PGD.name}@{given}"] = (PGD.name, {"eps": eps, "steps": args.pgd_steps, "step_size": eps / 4})
        attacks[f"{APGD_CE.name}@{given}"] = (APGD_CE.name, {"eps": eps, "steps": args.apgd_steps})
    pool = fake_pool(args.data, args.n)
    report = report_head(args)
    report["fidelity"] = {}
    started = time.perf_counter()
    for path in args.checkpoints:
        det = checkpoint.load(path).detector.eval()
        x = det.called_fake(pool, args.n)
        y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)
        if args.suite:
            for purifier in args.purifiers:
                for given in args.eps:
                    suite_row(report, det, x, y, path.name, purifier, own[purifier], given, args.budget)
                    save_report(args.json, report, complete=False)
            continue
        transfer: dict[str, torch.Tensor] = {}  # the bare detector's adversarial PNGs, per attack
        for key, (name, params) in attacks.items():
            reports = attack_and_measure(name, det, x, params=params, y=y, generator=torch.Generator().manual_seed(0))
            transfer[key] = torch.stack([r.adv for r in reports])
        for purifier in args.purifiers:
            declared = Defense(purifier=purifier, params=own[purifier])
            if purifier not in report["fidelity"]:
                report["fidelity"][purifier] = fidelity(x, declared)
            clean = judge(det, x, declared, fake_index=FAKE_INDEX).p_fake[0]
            for key, (name, params) in attacks.items():
                kept = judge(det, transfer[key], declared, fake_index=FAKE_INDEX).p_fake[0]
                row: dict[str, Any] = {
                    "detector": path.name,
                    "purifier": purifier,
                    "params": own[purifier],
                    "declared_bpda": declared.spec.bpda,
                    "attack": name,
                    "eps": params["eps"],
                    "eps_given": key.split("@")[1],
                    "attack_params": params,
                    "n": len(x),
                    "clean_fake_acc": float((clean >= 0.5).float().mean()),
                    "transfer_fake_acc": float((kept >= 0.5).float().mean()),
                    "adaptive_fake_acc": {},
                    "seconds": {},
                }
                for gradient in CANDIDATES[purifier]:
                    t = time.perf_counter()
                    defense = Defense(purifier=purifier, params=own[purifier], bpda=gradient)
                    done = attack_and_measure(
                        name, det, x, params=params, y=y, defense=defense, generator=torch.Generator().manual_seed(0)
                    )
                    row["adaptive_fake_acc"][gradient] = sum(not r.success for r in done) / len(done)
                    row["seconds"][gradient] = time.perf_counter() - t
                print(
                    f"{path.name:<14}{purifier:<9}{key:<16}clean {row['clean_fake_acc']:.3f}  transfer "
                    f"{row['transfer_fake_acc']:.3f}  adaptive "
                    + "  ".join(f"{g} {v:.3f}" for g, v in row["adaptive_fake_acc"].items())
                )
                report["rows"].append(row)
                save_report(args.json, report, complete=False)
    report["seconds"] = time.perf_counter() - started
    if report["fidelity"]:
        print({k: v for k, v in report["fidelity"].items() if v})
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
