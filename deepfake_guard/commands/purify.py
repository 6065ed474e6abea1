"""``deepfake-guard purify IMAGE -o OUT.png``: purify one image locally, no server needed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deepfake_guard.commands.methods import add_method_arguments, given_params


def add_parser(subparsers: Any) -> None:
    from models import purify as purifiers

    p = subparsers.add_parser("purify", help="purify an image locally (no server needed)")
    p.add_argument("image", type=Path, help="input image (JPEG, PNG, WebP or BMP)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the purified PNG")
    add_method_arguments(p, purifiers.PURIFIERS_REGISTRY, default=purifiers.names()[0])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="DIP network arithmetic")
    p.add_argument(
        "--engine", choices=("fast", "reference"), default="fast", help="DIP step execution (docs/PERFORMANCE.md)"
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models import purify as purifiers
    from models.devices import resolve_device
    from models.images import ImageError, load_image_file, save_png
    from models.progress import Progress
    from models.purify.engine import DipRuntime

    try:
        device = resolve_device(args.device)
        spec = purifiers.get(args.method)
        params = spec.resolve(given_params(args, spec))
        if spec.takes("runtime"):
            params["runtime"] = DipRuntime(engine=args.engine, precision=args.precision)
        if spec.takes("device"):
            params["device"] = device
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    try:
        x = load_image_file(args.image).unsqueeze(0)
    except (OSError, ImageError) as exc:
        print(f"error: cannot read {args.image}: {exc}")
        return 2

    bar = tqdm(desc=f"{args.method} {args.image.name}", unit="step", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        bar.total = p.max_iterations
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.2e}", psnr=f"{p.psnr:.1f}dB" if p.psnr is not None else "-", refresh=False)
        bar.refresh()

    try:
        result = spec.fn(x, progress=on_progress, **params)
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
