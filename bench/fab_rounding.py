"""FAB's minimal adversarials after 8-bit rounding: how many fool in float, how many still fool as the delivered PNG
with the minimal point (``round_finish=False``), and how many with the least scaled-out point that survives the
rounding (``round_finish=True``, the default; models/attacks/fab.py). Demo test fakes each detector calls fake, at
the suite's standard budget (100 steps). JSON out (docs/ATTACKS.md, "FAB after 8-bit rounding"). Needs torch only.

    python bench/fab_rounding.py --n 32 --eps 8/255 --json docs/results/fab-rounding-cpu.json
"""

from __future__ import annotations

import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report
from bpda_gradients import demo_parser, fake_pool, report_head

from models import checkpoint
from models.attacks.fab import fab
from models.detector import FAKE_INDEX
from models.images import quantize_8bit


def main(argv: list[str] | None = None) -> int:
    ap = demo_parser(__doc__)
    ap.add_argument("--eps", nargs="+", default=["8/255"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n < 1 or args.steps < 1:
        ap.error("--n and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    pool = fake_pool(args.data, args.n)
    report = report_head(args)
    started = time.perf_counter()
    for path in args.checkpoints:
        det = checkpoint.load(path).detector.eval()
        x = det.called_fake(pool, args.n)
        y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)

        def fooled(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return det(images).argmax(dim=1) != y  # noqa: B023 (used before the next detector)

        for given in args.eps:
            eps = float(Fraction(given))
            row: dict[str, Any] = {"detector": path.name, "eps": given, "n": len(x), "steps": args.steps}
            for finish in (False, True):
                t = time.perf_counter()
                adv = fab(det, x, y, eps=eps, steps=args.steps, round_finish=finish)
                png = quantize_8bit(adv)
                linf = (png - x).flatten(1).abs().amax(dim=1)
                hit = fooled(png)
                key = "scaled_out" if finish else "minimal"
                row[key] = {
                    "float_fooled": int(fooled(adv).sum()),
                    "png_fooled": int(hit.sum()),
                    "png_linf_median_255": statistics.median((linf[hit] * 255).tolist()) if bool(hit.any()) else None,
                    "seconds": time.perf_counter() - t,
                }
            print(
                f"{path.name:<14}eps {given:<7} float {row['minimal']['float_fooled']}/{len(x)}  PNG minimal "
                f"{row['minimal']['png_fooled']}/{len(x)}  PNG scaled out {row['scaled_out']['png_fooled']}/{len(x)}"
            )
            report["rows"].append(row)
            save_report(args.json, report, complete=False)
    report["seconds"] = time.perf_counter() - started
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
