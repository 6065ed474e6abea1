"""``deepfake-guard evaluate``: regenerate the paper's tables (R1-R4) for our detectors in one command.

Writes ``report.md``, ``results.json`` and PNG figures into ``--out``. ``--quick`` (the default) is sized for
CI on 2 CPU cores; ``--full`` uses the paper's sizes and is meant for a GPU (the size overrides below cut it
down for a CPU, and the report states the sizes used).
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any

#: Where `evaluate` looks for the demo data set when no --data is given (and builds it when it is missing).
DEMO_DATA = "data/demo"


def add_parser(subparsers: Any) -> None:
    from models.checkpoint import DEMO_CHECKPOINTS

    p = subparsers.add_parser(
        "evaluate",
        help="regenerate the paper's tables: clean, attacks, Lipschitz detectors, DIP",
        description="Evaluate detectors: clean detection, FGSM/CW-L2 white- and black-box with 8-bit/JPEG "
        "delivery, Lipschitz-regularised ResNets, DIP purification by category.",
    )
    p.add_argument(
        "--data",
        default=None,
        help=f"ImageFolder root with test/ (train/ and val/ for the sweep); default {DEMO_DATA}, built there first "
        "(deepfake-guard make-demo-data) when it has no test/ split",
    )
    p.add_argument(
        "--checkpoints",
        nargs="+",
        default=[str(DEMO_CHECKPOINTS / "demo-resnet18"), str(DEMO_CHECKPOINTS / "demo-vgg16")],
        help="detectors under test; black-box attacks transfer between architecture families",
    )
    p.add_argument(
        "--lipschitz-checkpoints", nargs="*", default=[], help="already-trained regularised detectors for R3"
    )
    p.add_argument("--out", default="runs/eval", help="output directory")
    p.add_argument(
        "--crop",
        choices=("none", "faces"),
        default="none",
        help="faces: the folders hold full photos; every face found is one sample, cut as the first detector crops "
        "it (docs/FACES.md); photos without one are skipped",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick", help="CI sizes (default)")
    size.add_argument("--full", dest="mode", action="store_const", const="full", help="the paper's sizes (GPU)")
    p.set_defaults(mode="quick")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: 1 with --quick, whose small batches gain nothing from more and lose much on "
        "a busy machine (docs/RESULTS.md); torch's choice otherwise)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None)
    o = p.add_argument_group("size overrides (stated in the report)")
    o.add_argument("--n-per-class", type=int, default=None, help="attacked test images per class")
    o.add_argument("--cw-presets", nargs="+", default=None, help="CW-L2 presets to run (default, paper)")
    o.add_argument("--cw-max-iterations", type=int, default=None, help="cap CW's steps per search step")
    o.add_argument("--cw-search-steps", type=int, default=None, help="cap CW's binary-search steps")
    o.add_argument("--lambdas", type=float, nargs="*", default=None, help="Lipschitz sweep lambdas (none: no sweep)")
    o.add_argument("--lipschitz-epochs", type=int, default=None)
    o.add_argument("--lipschitz-train-per-class", type=int, default=None)
    o.add_argument("--lipschitz-val-per-class", type=int, default=None)
    o.add_argument("--no-dip", action="store_true", help="skip R4")
    o.add_argument("--dip-detector", default=None, help="checkpoint name whose categories DIP is scored on")
    o.add_argument("--dip-per-category", type=int, default=None)
    o.add_argument(
        "--dip-iterations", type=int, default=None, help="DIP steps (snapshots and the stop are capped to it)"
    )
    o.add_argument("--dip-snapshots", type=int, nargs="+", default=None)
    o.add_argument("--dip-auto-cap", type=int, default=None, help="cap of the label-free stop (0: do not run it)")
    o.add_argument("--no-r5", action="store_true", help="skip R5 (adaptive attacks, standard suite)")
    o.add_argument("--r5-fakes", type=int, default=None, help="fakes attacked through each purifier in R5")
    o.add_argument("--r5-eps", type=_fraction, nargs="+", default=None, help="R5 PGD eps values, such as 2/255 8/255")
    o.add_argument("--r5-steps", type=int, default=None, help="R5 PGD steps")
    o.add_argument("--r5-purifiers", nargs="+", default=None, help="purifiers attacked in R5 (default: all)")
    o.add_argument("--r5-iterations", type=int, default=None, help="DIP steps of the defence in R5")
    o.add_argument("--r5-bpda-iterations", type=int, default=None, help="DIP steps inside the adaptive attack")
    o.add_argument("--r5-eot", type=int, default=None, help="EOT samples per adaptive step (randomised purifiers)")
    o.add_argument("--r5-resubmissions", type=int, default=None, help="purifier runs each delivered file is judged by")
    o.add_argument("--r5-suite-budget", choices=("standard", "quick"), default=None, help="standard suite budget")


def _fraction(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number such as 0.03 or 8/255") from None


def config_from_args(args: argparse.Namespace) -> Any:
    from models.evaluation import PRESETS

    config = PRESETS[args.mode]
    cw_overrides = dict(config.cw_overrides)
    if args.cw_max_iterations is not None:
        cw_overrides["max_iterations"] = args.cw_max_iterations
    if args.cw_search_steps is not None:
        cw_overrides["search_steps"] = args.cw_search_steps
    iterations = args.dip_iterations or config.dip_iterations
    snapshots = tuple(args.dip_snapshots or (*(s for s in config.dip_snapshots if s < iterations), iterations))
    stop_at = config.dip_stop_at if config.dip_stop_at in snapshots else max(snapshots)
    auto_cap = args.dip_auto_cap if args.dip_auto_cap is not None else None
    return config.with_overrides(
        n_per_class=args.n_per_class,
        cw_presets=tuple(args.cw_presets) if args.cw_presets else None,
        cw_overrides=cw_overrides,
        lipschitz_lambdas=tuple(args.lambdas) if args.lambdas is not None else None,
        lipschitz_epochs=args.lipschitz_epochs,
        lipschitz_train_per_class=args.lipschitz_train_per_class,
        lipschitz_val_per_class=args.lipschitz_val_per_class,
        dip=False if args.no_dip else None,
        dip_detector=args.dip_detector,
        dip_per_category=args.dip_per_category,
        dip_iterations=iterations,
        dip_snapshots=tuple(sorted(set(snapshots))),
        dip_stop_at=stop_at,
        dip_auto=False if auto_cap == 0 else (True if auto_cap else None),
        dip_auto_cap=auto_cap or None,
        r5=False if args.no_r5 else None,
        r5_fakes=args.r5_fakes,
        r5_eps=tuple(args.r5_eps) if args.r5_eps else None,
        r5_steps=args.r5_steps,
        r5_purifiers=tuple(args.r5_purifiers) if args.r5_purifiers else None,
        r5_iterations=args.r5_iterations,
        r5_bpda_iterations=args.r5_bpda_iterations,
        r5_eot=args.r5_eot,
        r5_resubmissions=args.r5_resubmissions,
        r5_suite_budget=args.r5_suite_budget,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from tqdm import tqdm

    from models.devices import resolve_device
    from models.evaluation import evaluate, write_outputs
    from models.progress import Progress

    threads = 1 if args.threads is None and args.mode == "quick" else args.threads
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    try:
        config = config_from_args(args)
    except ValueError as exc:  # a size the configuration refuses (models/evaluation/config.py names it)
        print(f"error: {exc}")
        return 2
    data = args.data
    if data is None:
        data = DEMO_DATA
        if not (Path(data) / "test").is_dir():
            from deepfake_guard.commands.make_demo_data import write_demo_data
            from models.data.demo import DemoConfig

            print(f"no demo data at {data}: building it first (docs/DATA.md)")
            write_demo_data(data, DemoConfig(), ["train", "val", "test"])
    if config.mode == "full" and device.type == "cpu":
        print(
            f"full mode on CPU: {config.n_per_class or 'all'} attacked images per class, CW {config.cw_presets} "
            f"{config.cw_overrides or ''}, DIP {config.dip_per_category} per category x {config.dip_iterations} steps"
            f"{f' + label-free stop (cap {config.dip_auto_cap})' if config.dip_auto else ''}, Lipschitz lambdas "
            f"{config.lipschitz_lambdas} x {config.lipschitz_epochs} epoch(s)"
        )
    bar: Any = None

    def progress(p: Progress) -> None:
        nonlocal bar
        if bar is None or bar.desc != p.stage or p.iteration < bar.n:
            if bar is not None:
                bar.close()
            bar = tqdm(total=p.max_iterations, desc=p.stage, unit="step", leave=False)
        bar.update(p.iteration - bar.n)

    started = time.perf_counter()
    results = evaluate(
        args.checkpoints,
        data,
        args.out,
        config,
        device=device,
        lipschitz_checkpoints=args.lipschitz_checkpoints,
        progress=progress,
        crop=args.crop,
    )
    if bar is not None:
        bar.close()
    paths = write_outputs(results, args.out)
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.0f} s")
    return 0
