"""``deepfake-guard robustness CHECKPOINT DATA --eps 8/255 --norm linf [--defense ...]``: the two-class standard
suite (APGD-CE + FAB + Square, worst case per image; with ``--norm l2`` APGD-CE and FAB in L2;
models/evaluation/robustness.py) on an ImageFolder.

Writes a JSON in the shape of a RobustBench model-info record (clean and robust accuracy in percent, eps, norm,
threat model, number of images, preprocessing, forward passes) with per-image results, ``unreliable`` computed from
the sanity flags (models/audit/sanity.py, ``suite_flags``); it validates against docs/schemas/robustness.schema.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepfake_guard.commands.argtypes import float_text, parse_threshold, positive_int
from deepfake_guard.commands.methods import add_defense_arguments, given_defense

#: Where the record's JSON schema lives (tests validate every output against it).
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "robustness.schema.json"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "robustness",
        help="robust accuracy under the two-class standard suite (APGD-CE + FAB + Square), RobustBench-shaped JSON",
    )
    p.add_argument("checkpoint", type=Path, help="the detector's checkpoint (path without suffix)")
    p.add_argument("data", type=Path, help="an ImageFolder (fake/ and real/) of test images")
    p.add_argument("--eps", type=float_text, default=8 / 255,
                   help="the budget: L-inf in (0, 1], e.g. 8/255 (default); with --norm l2 the whole perturbation's L2 "
                   "norm on the fitted image (docs/ATTACKS.md, L2 budgets)")  # fmt: skip
    p.add_argument("--norm", choices=("linf", "l2"), default="linf",
                   help="threat model: linf (APGD-CE + FAB + Square) or l2 (APGD-CE + FAB in L2)")  # fmt: skip
    p.add_argument("--budget", choices=("standard", "quick"), default="standard", help="attack budgets")
    p.add_argument(
        "-n", "--n-images", type=positive_int, default=100, help="images, alternating fake and real (default 100)"
    )
    p.add_argument("-o", "--out", type=Path, default=Path("robustness.json"), help="the JSON record to write")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seeds the attacks' random draws")
    p.add_argument("--batch", type=positive_int, default=32, help="images attacked together")
    p.add_argument(
        "--threshold", type=parse_threshold, default=None,
        help="operating threshold on p_fake (default: the checkpoint's fitted one, else 0.5, as /detect decides)",
    )  # fmt: skip
    add_defense_arguments(p)


def _pick(labels: list[int], n: int) -> list[int]:
    """Up to ``n`` indices alternating between the classes, in file order (a balanced, reproducible subset)."""
    by_class = [[i for i, y in enumerate(labels) if y == c] for c in sorted(set(labels))]
    out: list[int] = []
    while len(out) < n and any(by_class):
        for group in by_class:
            if group and len(out) < n:
                out.append(group.pop(0))
    return sorted(out)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models import checkpoint
    from models.attacks.adaptive import resolve_defense
    from models.audit.sanity import suite_flags
    from models.data.folder import list_images, read_fitted
    from models.detector import CLASS_NAMES, FAKE_INDEX
    from models.devices import resolve_device
    from models.evaluation.robustness import BUDGETS, SUITES, run_suite
    from models.methods import eps_text

    suite = SUITES[args.norm]
    try:
        if args.norm == "linf" and not 0 < args.eps <= 1:
            raise ValueError(f"eps must be in (0, 1] pixel units for --norm linf, got {args.eps!r}")
        if args.norm == "l2" and not 0 < args.eps < float("inf"):
            raise ValueError(f"eps must be a positive L2 norm, got {args.eps!r}")
        defense = resolve_defense(given_defense(args))
        device = resolve_device(args.device)
        loaded = checkpoint.load(args.checkpoint, map_location=device)
        items = list_images(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    chosen = [items[i] for i in _pick([y for _, y in items], args.n_images)]
    if not chosen:
        print(f"error: no images under {args.data}")
        return 2
    threshold, threshold_source = loaded.meta.operating_point(args.threshold)
    detector = loaded.detector.to(device).eval()
    # Each file read as an upload is and fitted as /detect fits it; the suite attacks the fitted input (as
    # RobustBench attacks a model's input), scored through the view that does not fit it again.
    fitted_view = detector.prefitted()
    budget = BUDGETS[args.budget]
    per_image: list[dict[str, Any]] = []
    correct = robust = passes = 0
    used: dict[str, Any] = {}
    gaps: list[float] = []
    attacked: list[dict[str, bool | None]] = []
    bar = tqdm(total=len(chosen) * len(suite), desc="robustness", unit="img-attack", dynamic_ncols=True)
    for start in range(0, len(chosen), args.batch):
        part = chosen[start : start + args.batch]
        try:
            x = torch.stack([read_fitted(path, detector.fitting) for path, _ in part]).to(device)
        except ValueError as exc:  # an unreadable file, a strip the fitting refuses: named, never a traceback
            bar.close()
            print(f"error: {exc}")
            return 2
        y = torch.tensor([label for _, label in part], dtype=torch.long, device=device)

        def on_attack(name: str, images: int, count: int = len(part)) -> None:
            bar.set_postfix(attack=name, left=images)
            bar.update(count)

        result = run_suite(
            fitted_view, x, y, eps=args.eps, budget=budget, defense=defense, seed=args.seed + start,
            on_attack=on_attack, threshold=threshold, suite=suite,
        )  # fmt: skip
        with torch.no_grad():  # a second pass: a random layer active at inference shows as a gap
            again = torch.softmax(fitted_view(x).float(), dim=1)[:, FAKE_INDEX].tolist()
        gaps += [abs(a - b) for a, b in zip(result.clean_p_fake, again, strict=True)]
        attacked += result.attacks
        used = result.params
        passes += result.forward_passes
        for (path, label), p_fake, ok, rob, attacks in zip(
            part, result.clean_p_fake, result.clean_correct, result.robust, result.attacks, strict=True
        ):
            correct += ok
            robust += rob
            fooled_by = next((name for name, hit in attacks.items() if hit), None)
            per_image.append(
                {"file": str(path.relative_to(args.data)), "label": CLASS_NAMES[label], "p_fake": p_fake,
                 "clean_correct": ok, "robust": rob, "fooled_by": fooled_by, "attacks": attacks}
            )  # fmt: skip
    bar.close()
    n = len(per_image)
    flags = suite_flags(attacked, gaps, defense=defense)
    record = {
        "name": args.checkpoint.name,
        "architecture": loaded.meta.architecture,
        "dataset": args.data.name or str(args.data),
        "threat_model": {"linf": "Linf", "l2": "L2"}[args.norm],
        "norm": args.norm,
        "eps": args.eps,
        "eps_text": eps_text(args.eps) if args.norm == "linf" else f"{args.eps:g}",
        "n_images": n,
        "clean_acc": 100.0 * correct / n,
        "robust_acc": 100.0 * robust / n,
        "autoattack_acc": 100.0 * robust / n,
        "number_forward_passes": 1,
        "attack_forward_passes": passes,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "preprocessing": {
            **detector.fitting.describe(),
            "reader": "as an upload is read (EXIF orientation applied; 16-bit, CMYK, palette and grey to RGB)",
            "normalisation": "mean/std inside the detector",
            "delivery": "8-bit PNG: every adversarial image is rounded to 8 bits before it is judged",
            "defense": None if defense is None else defense.describe(),
        },
        "attacks": [{"name": spec.name, "params": used.get(spec.name, {})} for spec in suite],
        "additional_data": False,
        "unreliable": bool(flags),
        "flags": flags,
        "footnote": "two-class suite: APGD-CE + FAB + Square (APGD-T and FAB-T need more than two classes)"
        if args.norm == "linf"
        else "two-class L2 suite: APGD-CE + FAB in L2 (eps: the perturbation's L2 norm on the fitted image)",
        "seed": args.seed,
        "per_image": per_image,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"clean {record['clean_acc']:.1f} %, robust {record['robust_acc']:.1f} % at eps {record['eps_text']} "
          f"({record['threat_model']}) on {n} images; wrote {args.out}")  # fmt: skip
    if flags:
        print("unreliable: " + "; ".join(f["reason"] for f in flags))
    return 0
