"""``deepfake-guard make-demo-data DIR``: write the offline demo ImageFolder (see docs/DATA.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    from models.data.demo import DemoConfig  # light: torch, numpy and PIL only

    d = DemoConfig()
    p = subparsers.add_parser(
        "make-demo-data",
        help="write the offline demo ImageFolder dataset",
        description="Write DIR/{train,val,test}/{fake,real}/*.png from photos shipped by installed wheels; "
        "fakes have their centre re-synthesised by a small autoencoder. Same seed, same bytes.",
    )
    p.add_argument("dir", metavar="DIR", help="output directory (created)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--size", type=int, default=d.size, help=f"image side in pixels (default {d.size})")
    for split in ("train", "val", "test"):
        n = d.count(split)
        p.add_argument(
            f"--n-{split}", type=int, default=n, help=f"{split} images, both classes together (even; default {n})"
        )
    p.add_argument(
        "--splits",
        default="train,val,test",
        help="comma-separated splits to write (default all); a split's files do not depend on the others",
    )
    p.add_argument(
        "--generator-steps",
        type=int,
        default=d.generator_steps,
        help=f"autoencoder training steps (default {d.generator_steps})",
    )


def run(args: argparse.Namespace) -> int:
    from models.data.demo import DemoConfig

    config = DemoConfig(
        seed=args.seed,
        size=args.size,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        generator_steps=args.generator_steps,
    )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    write_demo_data(args.dir, config, splits)
    return 0


def write_demo_data(directory: Any, config: Any, splits: list[str]) -> dict[str, Any]:
    """Generate the demo ImageFolder with a progress bar per stage; prints what was written."""
    from tqdm import tqdm

    from models.data.demo import generate
    from models.progress import Progress

    bars: dict[str, Any] = {}

    def progress(p: Progress) -> None:
        bar = bars.get(p.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[p.stage] = tqdm(
                total=p.max_iterations, desc=p.stage, unit="step" if p.stage == "generator" else "img"
            )
        bar.update(p.iteration - bar.n)
        if p.loss == p.loss:  # not NaN
            bar.set_postfix(l1=f"{p.loss:.4f}")

    try:
        manifest = generate(directory, config, splits=splits, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    counts = ", ".join(f"{s} {len(manifest['files'][s])}" for s in manifest["splits"])
    print(f"wrote {directory}: {counts} images; content sha256 {manifest['content_sha256']}")
    return dict(manifest)
