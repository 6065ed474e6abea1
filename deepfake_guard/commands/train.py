"""``deepfake-guard train DATA_DIR --arch NAME --out checkpoints/NAME``: train a detector on an ImageFolder.

DATA_DIR holds ``train/``, ``val/`` and ``test/``, each with ``fake/`` and ``real/`` (fake = class 0).
The epoch kept is the one with the best validation accuracy; the test split is read once, at the end,
and its metrics go into the checkpoint's metadata with the provenance needed to reproduce it.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a detector on an ImageFolder and write a checkpoint",
        description="Train a detector on DATA_DIR/{train,val,test}/{fake,real}; select on val, report on test.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="ImageFolder root with train/, val/ and test/")
    p.add_argument("--arch", required=True, help="architecture from the registry (resnet18, vgg16_slim, ...)")
    p.add_argument("--out", required=True, help="checkpoint path without suffix, e.g. checkpoints/my-detector")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sgd uses --momentum (paper: 0.9)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument(
        "--augment",
        choices=("none", "flip", "dihedral"),
        default="flip",
        help="flip: random horizontal mirror (default); dihedral: also vertical mirror and transposition",
    )
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[64],
        metavar="PX",
        help="training size: one value (square) or H W; the detector resizes any input to it (default 64)",
    )
    p.add_argument(
        "--crop",
        choices=("none", "faces"),
        default="none",
        help="faces: the folders hold full photos; train on each face found (docs/FACES.md), photos without one "
        "are skipped",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0: in-process)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--lipschitz-lambda",
        type=float,
        nargs="+",
        default=[0.0],
        metavar="LAMBDA",
        help="weight of the input-gradient penalty (paper: 5, 50, 500, 5000); several values train one checkpoint "
        "each, written to OUT-lambdaVALUE (default 0: plain cross-entropy)",
    )
    p.add_argument(
        "--smooth-relu",
        action="store_true",
        help="swap ReLU for the paper's HHReLU (d = 0.5): --arch resnet18 trains resnet18_hhrelu",
    )


def _image_size(values: list[int]) -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 8:
        raise ValueError(f"--image-size takes one or two sizes >= 8, got {values}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def run(args: argparse.Namespace) -> int:
    lambdas = list(args.lipschitz_lambda)
    if len(lambdas) == 1:
        return _train_one(args, lambdas[0], args.out)
    # A sweep: one checkpoint per lambda, same data, seed and schedule.
    for lam in lambdas:
        rc = _train_one(args, lam, f"{args.out}-lambda{lam:g}")
        if rc:
            return rc
    return 0


def _train_one(args: argparse.Namespace, lipschitz_lambda: float, out: str) -> int:
    import hashlib
    import json
    import platform
    import shlex
    import sys
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from models import checkpoint, registry
    from models.devices import resolve_device
    from models.facecrop import folder_for
    from models.progress import Progress
    from models.training import EpochStats, TrainConfig, evaluate, train_detector

    size = _image_size(args.image_size)
    arch = f"{args.arch}_hhrelu" if args.smooth_relu and not args.arch.endswith("_hhrelu") else args.arch
    spec = registry.get(arch)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        schedule=args.schedule,
        augment=args.augment,
        lipschitz_lambda=lipschitz_lambda,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    root = Path(args.data_dir)
    torch.manual_seed(args.seed)
    detector = spec.build(input_size=size)
    # What the detector will see when served: plain resizes, or (crop=faces) its face crops (models/facecrop.py).
    train_set, val_set, test_set = (folder_for(root / s, detector, crop=args.crop) for s in ("train", "val", "test"))
    print(
        f"{arch} (lipschitz lambda {lipschitz_lambda:g}): {sum(p.numel() for p in detector.parameters()) / 1e6:.2f} M "
        f"parameters, {size[0]}x{size[1]}, "
        f"{device}; train {train_set.class_counts()}, val {val_set.class_counts()}"
    )
    bar: Any = None

    def progress(p: Progress) -> None:
        nonlocal bar
        if bar is None or bar.desc != p.stage:
            if bar is not None:
                bar.close()
            bar = tqdm(total=p.max_iterations // config.epochs, desc=p.stage, unit="batch")
        bar.update((p.iteration - 1) % bar.total + 1 - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    def on_epoch(s: EpochStats) -> None:
        if bar is not None:
            bar.close()
        print(
            f"epoch {s.epoch}: train loss {s.train_loss:.4f} acc {s.train_accuracy:.4f} | val loss "
            f"{s.val['loss']:.4f} acc {s.val['accuracy']:.4f} auroc {s.val['auroc']} ({s.seconds:.0f} s)"
            + (f" | penalty {s.train_penalty:.3g}" if lipschitz_lambda > 0 else "")
        )

    started = time.perf_counter()
    result = train_detector(
        detector, train_set, val_set, config, device=device, workers=args.workers, progress=progress, on_epoch=on_epoch
    )
    train_seconds = time.perf_counter() - started
    test = evaluate(result.detector.prefitted(), test_set, device=device, workers=args.workers)
    print(
        f"chosen epoch {result.best_epoch} (val acc {result.best_val['accuracy']:.4f}); test acc "
        f"{test['accuracy']:.4f} auroc {test['auroc']} precision {test['precision']} recall {test['recall']}"
    )

    manifest = root / "manifest.json"
    manifest_info: dict[str, Any] = {"manifest_sha256": None}
    if manifest.is_file():
        raw = manifest.read_bytes()
        manifest_json = json.loads(raw)
        manifest_info = {
            # Only make-demo-data writes a manifest with this name (models/data/demo.py): GET /models then warns
            # that verdicts on real photos mean nothing (docs/DATA.md).
            "demo": manifest_json.get("name") == "deepfake-guard demo dataset",
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "content_sha256": manifest_json.get("content_sha256"),
            "split_sha256": manifest_json.get("split_sha256"),
        }
    provenance = {
        "dataset": {
            "path": args.data_dir,
            **manifest_info,
            "counts": {s: d.class_counts() for s, d in (("train", train_set), ("val", val_set), ("test", test_set))},
            "crop": args.crop,
            "no_face": {
                s: len(getattr(d, "no_face", []))
                for s, d in (("train", train_set), ("val", val_set), ("test", test_set))
            },
        },
        # ``argv`` exactly as run (``python -m deepfake_guard.cli`` shows as the path of cli.py);
        # ``command`` is the same call through the console script, to copy and rerun.
        "command": shlex.join(["deepfake-guard", *sys.argv[1:]]),
        "argv": list(sys.argv),
        "seed": args.seed,
        "training": {
            **vars(config),
            "image_size": list(size),
            "from_scratch": True,
            "smooth_relu": arch.endswith("_hhrelu"),
        },
        "epochs": config.epochs,
        "chosen_epoch": result.best_epoch,
        "selection": "best val accuracy (then val AUROC, then lower val loss); test read once, at the end",
        "history": [
            {
                "epoch": s.epoch,
                "train_loss": round(s.train_loss, 5),
                "train_accuracy": round(s.train_accuracy, 5),
                "val_loss": round(s.val["loss"], 5),
                "val_accuracy": s.val["accuracy"],
                "val_auroc": s.val["auroc"],
                "train_penalty": s.train_penalty,
                "seconds": round(s.seconds, 1),
            }
            for s in result.history
        ],
        "train_seconds": round(train_seconds, 1),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta = checkpoint.CheckpointMeta(
        architecture=arch,
        input_size=size,
        mean=spec.mean,
        std=spec.std,
        class_names=spec.class_names,
        provenance=provenance,
        metrics={"test": test, "val": result.best_val},
    )
    digest = checkpoint.save(result.detector, out, meta)
    weights, meta_path = checkpoint.paths_for(out)
    print(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}) and {meta_path}")
    return 0
