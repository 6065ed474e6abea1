"""Does the defence hold? PGD that ignores each purifier beside PGD through it (BPDA, EOT), same eps, same budget,
judged as the defender sees the delivered 8-bit file; and the cost of one adaptive step through DIP (EOT 1, 2, 4)
beside one DIP purification step. JSON out (docs/RESULTS.md, "R5").

    python bench/adaptive.py --n 16 --eps 2/255 8/255 --out runs/adaptive.json
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from models import checkpoint
from models import purify as purifiers
from models.attacks.adaptive import Defended, judge, resolve_defense
from models.attacks.measure import attack_and_measure
from models.attacks.pgd import PGD
from models.checkpoint import DEMO_CHECKPOINTS
from models.data.folder import list_images, read_image
from models.detector import FAKE_INDEX


def defense_request(spec: purifiers.PurifierSpec, args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"method": spec.name}
    if spec.iterations_param is not None:  # DIP: its fixed early stop, shortened for a CPU
        req.update({"preset": "early", spec.iterations_param: args.dip_iterations})
        req.update({"bpda_iterations": args.bpda_iterations, "eot_samples": args.eot, "resubmissions": args.resub})
    return req


def step_costs(det: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of one adaptive PGD step through DIP (``bpda_iterations`` DIP steps per EOT sample) per EOT count,
    and of one DIP purification step, on the same images."""
    dip = next(s for s in purifiers.PURIFIERS_REGISTRY if s.iterations_param is not None)
    out: dict[str, float] = {}
    t = time.perf_counter()
    dip.fn(x, preset="early", **{dip.iterations_param: args.bpda_iterations})  # type: ignore[arg-type]
    out["dip_purification_step_s"] = (time.perf_counter() - t) / args.bpda_iterations
    for eot in (1, 2, 4):
        d = resolve_defense({**defense_request(dip, args), "eot_samples": eot})
        assert d is not None
        model = Defended(det, d)
        t = time.perf_counter()
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)
        out[f"adaptive_step_eot{eot}_s"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINTS / "demo-resnet18")
    ap.add_argument("--data", type=Path, default=Path("data/demo/test"))
    ap.add_argument("--n", type=int, default=16, help="test fakes the detector calls fake")
    ap.add_argument("--eps", nargs="+", default=["2/255", "8/255"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dip-iterations", type=int, default=200)
    ap.add_argument("--bpda-iterations", type=int, default=50)
    ap.add_argument("--eot", type=int, default=2)
    ap.add_argument("--resub", type=int, default=2)
    ap.add_argument("--purifiers", nargs="+", choices=purifiers.names(), default=purifiers.names())
    ap.add_argument("--no-step-costs", action="store_true", help="skip the DIP step timing")
    ap.add_argument("--out", type=Path, default=Path("runs/adaptive.json"))
    args = ap.parse_args()
    det = checkpoint.load(args.checkpoint).detector.eval()
    fakes = [p for p, label in list_images(args.data) if label == FAKE_INDEX]
    x = torch.stack([read_image(p) for p in fakes[: 3 * args.n]])
    with torch.no_grad():
        x = x[det.p_fake(x) >= 0.5][: args.n]
    y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)
    rows = []
    for eps_text in args.eps:
        eps = float(Fraction(eps_text))
        params = {"eps": eps, "steps": args.steps, "step_size": eps / 4}
        t = time.perf_counter()
        plain = attack_and_measure(PGD.name, det, x, params=params, y=y, generator=torch.Generator().manual_seed(0))
        plain_s = (time.perf_counter() - t) / len(x)
        delivered = torch.stack([r.adv for r in plain])
        for spec in (purifiers.get(name) for name in args.purifiers):
            d = resolve_defense(defense_request(spec, args))
            assert d is not None
            t = time.perf_counter()
            p = judge(det, delivered, d, fake_index=FAKE_INDEX).p_fake
            judge_s = (time.perf_counter() - t) / len(x)
            clean = judge(det, x, d, fake_index=FAKE_INDEX).p_fake
            t = time.perf_counter()
            adaptive = attack_and_measure(
                PGD.name, det, x, params=params, y=y, defense=d, generator=torch.Generator().manual_seed(0)
            )
            adaptive_s = (time.perf_counter() - t) / len(x)
            row = {
                "purifier": spec.name,
                "eps": eps_text,
                "n": len(x),
                "defense": d.describe(),
                "clean_fake_acc": float((clean >= 0.5).all(dim=0).float().mean()),
                "non_adaptive_fake_acc_worst": float((p >= 0.5).all(dim=0).float().mean()),
                "non_adaptive_fake_acc_mean": float((p >= 0.5).float().mean()),
                "adaptive_fake_acc_worst": 1 - sum(r.success for r in adaptive) / len(x),
                "adaptive_fake_acc_mean": 1 - sum(r.defense["success_rate"] for r in adaptive if r.defense) / len(x),
                "non_adaptive_s_per_image": plain_s + judge_s,
                "adaptive_s_per_image": adaptive_s,
            }
            rows.append(row)
            print(json.dumps(row))
    result = {
        "rows": rows,
        "step_costs": step_costs(det, x[:4], args),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(result["step_costs"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
