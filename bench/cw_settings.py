"""CW-L2 settings on the demo detectors: success in float and after 8-bit delivery, iterations, median L2.

Each configuration attacks the same demo test fakes (those the detector calls fake) on each demo detector, with
the attack's own early abort. "float" judges the crafted tensor; "png" the 8-bit file a user would receive
(``models.attacks.measure.deliver``). Iterations are the optimisation steps CW-L2 ran per image (its early abort
ends most search steps well before ``max_iterations``). docs/ATTACKS.md quotes this script's output.

    python bench/cw_settings.py --data data/demo/test --n 32 --json out/cw-settings.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint
from models.attacks import CW_PRESETS, cw_l2
from models.attacks.measure import deliver
from models.detector import FAKE_INDEX
from models.images import load_image_file

#: name -> overrides of the ``default`` preset
CONFIGS: dict[str, dict[str, Any]] = {
    "kappa 1, lr 0.05 (the default until bench/cw_peers.py)": {"lr": 0.05},
    "kappa 0, lr 0.05": {"kappa": 0.0, "lr": 0.05},
    "kappa 0, lr 0.01": {"kappa": 0.0, "lr": 0.01},
    "default (kappa 1, lr 0.01)": {"lr": 0.01},
    "kappa 0, lr 0.05, rounding finish": {"kappa": 0.0, "lr": 0.05, "round_finish": True},
    "kappa 0, lr 0.01, rounding finish": {"kappa": 0.0, "lr": 0.01, "round_finish": True},
    "kappa 1, lr 0.05, rounding finish": {"lr": 0.05, "round_finish": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo/test"), help="folder with fake/ and real/")
    parser.add_argument("--n", type=int, default=32, help="fakes per detector (the first n the detector catches)")
    parser.add_argument("--checkpoints", type=Path, default=checkpoint.DEMO_CHECKPOINTS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted((args.data / "fake").glob("*.png"))
    if not files:
        raise SystemExit(f"no fakes under {args.data}/fake; run: deepfake-guard make-demo-data data/demo --splits test")
    images = torch.stack([load_image_file(p) for p in files])
    report: dict[str, Any] = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": CW_PRESETS["default"],
        "rows": [],
    }
    print(f"{'detector':<15} {'configuration':<28} {'float':>7} {'png':>7} {'iters':>6} {'L2 png':>7} {'s/img':>6}")
    for name in ("demo-resnet18", "demo-vgg16"):
        det = checkpoint.load(args.checkpoints / f"{name}.safetensors").detector.eval()
        x = det.called_fake(images, args.n)
        y = torch.full((len(x),), FAKE_INDEX, dtype=torch.long)
        for label in args.configs:
            params = {**CW_PRESETS["default"], **CONFIGS[label]}
            torch.manual_seed(0)
            started = time.perf_counter()
            result = cw_l2(det, x, y, **params)
            seconds = time.perf_counter() - started
            png, _ = deliver(result.adv, "png")
            with torch.no_grad():
                fooled_png = det.p_fake(png) < 0.5
            l2 = (png - x).flatten(1).norm(dim=1)[fooled_png].tolist()
            row = {
                "detector": name, "configuration": label, "params": params, "n": len(x),
                "float_success": int(result.success.sum()), "png_success": int(fooled_png.sum()),
                "mean_iterations": float(result.iterations.float().mean()),
                "median_l2_png": statistics.median(l2) if l2 else None, "seconds_per_image": seconds / len(x),
            }  # fmt: skip
            report["rows"].append(row)
            save_report(args.json, report, complete=False)
            print(
                f"{name:<15} {label:<28} {row['float_success']:>3}/{len(x):<3} {row['png_success']:>3}/{len(x):<3} "
                f"{row['mean_iterations']:>6.0f} {row['median_l2_png'] or float('nan'):>7.3f} "
                f"{row['seconds_per_image']:>6.2f}",
                flush=True,
            )
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
