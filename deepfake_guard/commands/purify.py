"""``deepfake-guard purify IMAGE -o OUT.png``: purify one image locally, no server needed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

METHODS = ("dip", "jpeg", "median", "bitdepth")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("purify", help="purify an image locally (no server needed)")
    p.add_argument("image", type=Path, help="input image (JPEG, PNG, WebP or BMP)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the purified PNG")
    p.add_argument("--method", choices=METHODS, default="dip")
    p.add_argument("--preset", choices=("paper", "default", "early"), default="default", help="DIP preset")
    p.add_argument("--max-iterations", type=int, default=None, help="DIP step cap (overrides the preset)")
    p.add_argument("--stop", choices=("auto", "fixed"), default=None, help="DIP stop rule (overrides the preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="DIP network arithmetic")
    p.add_argument(
        "--engine", choices=("fast", "reference"), default="fast", help="DIP step execution (docs/PERFORMANCE.md)"
    )
    p.add_argument("--quality", type=int, default=75, help="JPEG quality (method jpeg)")
    p.add_argument("--kernel-size", type=int, default=3, help="median window (method median)")
    p.add_argument("--bits", type=int, default=5, help="bits per channel (method bitdepth)")


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models.images import ImageError, load_image_file, save_png
    from models.progress import Progress
    from models.purify import PURIFIERS
    from models.purify.engine import DipRuntime

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    try:
        x = load_image_file(args.image).unsqueeze(0)
    except (OSError, ImageError) as exc:
        print(f"error: cannot read {args.image}: {exc}")
        return 2

    params: dict[str, Any]
    if args.method == "dip":
        try:
            runtime = DipRuntime(engine=args.engine, precision=args.precision)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        params = {
            "preset": args.preset,
            "max_iterations": args.max_iterations,
            "stop": args.stop,
            "seed": args.seed,
            "device": device,
            "runtime": runtime,
        }
    else:
        params = {
            "jpeg": {"quality": args.quality},
            "median": {"kernel_size": args.kernel_size},
            "bitdepth": {"bits": args.bits},
        }[args.method]

    bar = tqdm(desc=f"{args.method} {args.image.name}", unit="step", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        bar.total = p.max_iterations
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.2e}", psnr=f"{p.psnr:.1f}dB" if p.psnr is not None else "-", refresh=False)
        bar.refresh()

    try:
        result = PURIFIERS[args.method](x, progress=on_progress, **params)
    except ValueError as exc:
        bar.close()
        print(f"error: {exc}")
        return 2
    bar.close()
    save_png(result.image[0], args.output)
    stops = (
        f", stopped by {result.stopped_by} at iteration {result.iterations[0]} of {result.steps}"
        if result.steps
        else ""
    )
    print(f"wrote {args.output} ({args.method}, {result.seconds:.1f} s{stops})")
    return 0
