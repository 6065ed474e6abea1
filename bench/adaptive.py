"""Does the defence hold? PGD that ignores each purifier beside PGD through it (BPDA, EOT), same eps, same budget,
judged as the defender sees the delivered 8-bit file; and the cost of one adaptive step through DIP (EOT 1, 2, 4)
beside one DIP purification step. The rows are models/evaluation/adaptive.py's, as `evaluate` reports them in R5;
this script runs them at sizes of its own. JSON out (docs/RESULTS.md, "R5"). Needs torch only (never imports app/).

    python bench/adaptive.py --n 16 --purifiers jpeg median bitdepth --no-step-costs --json runs/adaptive-cheap.json
    python bench/adaptive.py --n 4 --eps 8/255 --steps 5 --purifiers dip --dip-iterations 1000 \\
        --bpda-iterations 100 --eot 2 --resub 2 --json runs/adaptive-dip.json
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
from models import purify as purifiers
from models.checkpoint import DEMO_CHECKPOINTS
from models.data.folder import list_images, read_image
from models.detector import FAKE_INDEX
from models.devices import resolve_device
from models.evaluation.adaptive import purifier_rows, step_costs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINTS / "demo-resnet18")
    ap.add_argument("--data", type=Path, default=Path("data/demo/test"), help="folder with fake/ and real/")
    ap.add_argument("--n", type=int, default=16, help="test fakes the detector calls fake")
    ap.add_argument("--eps", nargs="+", default=["2/255", "8/255"])
    ap.add_argument("--steps", type=int, default=10, help="PGD steps (step size eps / 4)")
    ap.add_argument("--dip-iterations", type=int, default=200, help="DIP's fixed stop as the defence runs it")
    ap.add_argument("--bpda-iterations", type=int, default=50, help="DIP steps inside the attack")
    ap.add_argument("--eot", type=int, default=2)
    ap.add_argument("--resub", type=int, default=2)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.25], help="fake when p_fake >= these")
    ap.add_argument("--purifiers", nargs="+", choices=purifiers.names(), default=purifiers.names())
    ap.add_argument("--no-step-costs", action="store_true", help="skip the DIP step timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    det = checkpoint.load(args.checkpoint).detector.eval().to(device)
    fakes = [p for p, label in list_images(args.data) if label == FAKE_INDEX]
    x = det.called_fake(torch.stack([read_image(p) for p in fakes[: 3 * args.n]]).to(device), args.n)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint),
        "n": len(x),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    started = time.perf_counter()

    def done(row: dict[str, Any]) -> None:  # printed and saved as each row ends, so a run cut short keeps it
        accs = row["thresholds"][str(args.thresholds[0])]
        print(
            f"{row['purifier']:<10}eps {row['eps'] * 255:.3g}/255  clean {accs['clean']['worst']:.3f}  non-adaptive "
            f"{accs['non_adaptive']['worst']:.3f}  adaptive {accs['adaptive']['worst']:.3f} (worst, threshold "
            f"{args.thresholds[0]})  {row['adaptive_s_per_image']:.2f} s/img adaptive"
        )
        report["rows"].append(row)
        save_report(args.json, report, complete=False)

    purifier_rows(
        det, x, purifier_names=args.purifiers, eps_values=[float(Fraction(e)) for e in args.eps], steps=args.steps,
        iterations=args.dip_iterations, bpda_iterations=args.bpda_iterations, eot_samples=args.eot,
        resubmissions=args.resub, thresholds=args.thresholds, on_row=done,
    )  # fmt: skip
    if not args.no_step_costs:
        report["step_costs"] = step_costs(
            det, x[:4], iterations=args.dip_iterations, bpda_iterations=args.bpda_iterations
        )
        print({k: round(v, 4) for k, v in report["step_costs"].items()})
    report["seconds"] = time.perf_counter() - started
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
