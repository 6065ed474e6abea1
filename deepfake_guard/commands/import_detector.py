"""``deepfake-guard import-detector SRC --arch NAME --fake-index K --out DIR/NAME``: serve a detector trained elsewhere.

SRC is a safetensors file or a ``torch.save`` state dict (read with ``weights_only=True``: a pickle that
needs code is refused, never run). TorchScript and ``torch.export`` programs need ``--allow-code``; only
their weights are kept. The detector is validated on probe images before anything is written; ``--eval``
adds metrics on an ImageFolder (``fake/`` and ``real/``). Putting the written NAME.safetensors and NAME.json
into the service's checkpoint folder (DFG_CHECKPOINTS_DIR) serves it as NAME. README: "Bring your own detector".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-detector",
        help="import a detector's weights (safetensors or state dict) as a served checkpoint",
        description="Import a detector trained elsewhere: load its weights into a registry architecture "
        "(torchvision:NAME, timm:NAME or a built-in name), validate it, and write a checkpoint.",
    )
    p.add_argument("src", metavar="SRC", help="safetensors file or torch.save(model.state_dict()) file")
    p.add_argument("--arch", required=True, help="architecture: torchvision:resnet50, timm:legacy_xception, ...")
    p.add_argument("--out", required=True, help="checkpoint path without suffix, e.g. checkpoints/my-xception")
    p.add_argument("--logits", type=int, choices=(1, 2), default=2, help="head size: 2 (softmax) or 1 (sigmoid)")
    p.add_argument(
        "--fake-index",
        type=int,
        choices=(0, 1),
        required=True,
        help="index of the fake class in the model's output (FaceForensics++ convention: 1); "
        "with --logits 1, 1 means the sigmoid scores fake",
    )
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the architecture's own")
    p.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="default: the architecture's own")
    p.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="default: the architecture's own")
    p.add_argument(
        "--resize",
        choices=("resize", "center-crop", "short-side-crop"),
        default="resize",
        help="how an image reaches the input size: resize the whole image (default), scale and cut the centre, or "
        "short-side-crop: torchvision/timm's eval transform, Resize(--resize-short) then CenterCrop(input size)",
    )
    short = p.add_mutually_exclusive_group()
    short.add_argument(
        "--resize-short", type=int, metavar="S", help="short-side-crop: the shorter side before the crop (e.g. 256)"
    )
    short.add_argument(
        "--crop-pct", type=float, metavar="P", help="short-side-crop as timm writes it: S = input size / P (0.875)"
    )
    p.add_argument(
        "--interpolation", choices=("bilinear", "bicubic"), default="bilinear", help="resampling (default bilinear)"
    )
    p.add_argument(
        "--no-antialias", dest="antialias", action="store_false", help="resample without antialiasing (torchvision "
        "before 0.17, timm's PIL-free paths); the default antialiases, as torchvision's Resize does now",
    )  # fmt: skip
    p.add_argument("--eval", metavar="IMAGEFOLDER", help="folder with fake/ and real/: metrics go into the JSON")
    p.add_argument(
        "--allow-code",
        action="store_true",
        help="accept TorchScript / torch.export programs (their code runs once, here; only the weights are kept)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument(
        "--calibrate", metavar="IMAGEFOLDER", help="validation folder (fake/, real/): fit the operating threshold for "
        "--target-fpr on it; /detect then uses it when a request gives none (with --eval: ROC figures on that folder)",
    )  # fmt: skip
    p.add_argument("--target-fpr", type=float, default=0.05, help="false-positive rate for --calibrate (default 0.05)")
    p.add_argument("--roc", metavar="PNG", help="with --calibrate and --eval: write the ROC curve there")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for --eval")
    p.add_argument("--device", default="cpu", help="device for --eval: cpu, cuda or cuda:N (default cpu)")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "torchvision", "timm", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _fitting_text(meta: Any) -> str:
    short = f" {meta.resize_short}" if meta.resize_short else ""
    return f"{meta.resize}{short}, {meta.interpolation}{'' if meta.antialias else ', no antialias'}"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import shlex
    from datetime import UTC, datetime
    from pathlib import Path

    from tqdm import tqdm

    from models import checkpoint
    from models.importing import DetectorImportError, evaluate_folder, import_detector, write
    from models.progress import Progress

    weights, meta_path = checkpoint.paths_for(args.out)
    if not args.force and (weights.exists() or meta_path.exists()):
        return _error(f"{weights} or {meta_path} exists; pass --force to replace it")
    if args.input_size is not None and min(args.input_size) < 8:
        return _error(f"--input-size takes two sizes >= 8, got {args.input_size}")
    if args.eval is not None and not Path(args.eval).is_dir():
        return _error(f"--eval {args.eval!r} is not a folder")
    if args.batch_size < 1:
        return _error(f"--batch-size must be >= 1, got {args.batch_size}")
    resize_short = args.resize_short
    if args.crop_pct is not None or resize_short is not None:
        if args.resize != "short-side-crop":
            return _error("--resize-short and --crop-pct apply to --resize short-side-crop")
    elif args.resize == "short-side-crop":
        return _error("--resize short-side-crop needs --resize-short S or --crop-pct P")
    try:
        if args.crop_pct is not None:
            from models import registry
            from models.fitting import short_side_for_crop_pct

            size = tuple(args.input_size) if args.input_size else registry.get(args.arch).input_size
            resize_short = short_side_for_crop_pct(size, args.crop_pct)
        imported = import_detector(
            args.src,
            architecture=args.arch,
            logits=args.logits,
            fake_index=args.fake_index,
            input_size=tuple(args.input_size) if args.input_size else None,
            mean=args.mean,
            std=args.std,
            resize=args.resize,
            resize_short=resize_short,
            interpolation=args.interpolation,
            antialias=args.antialias,
            allow_code=args.allow_code,
        )
    except (DetectorImportError, ValueError) as exc:
        return _error(str(exc))
    meta, source = imported.meta, imported.source
    print(
        f"{source.path.name} ({source.format}, sha256 {source.sha256[:12]}"
        f"{', unwrapped ' + ' '.join(source.unwrapped) if source.unwrapped else ''}) -> {meta.architecture}, "
        f"{meta.logits} logit(s), fake at {meta.fake_index}, {meta.input_size[0]}x{meta.input_size[1]} "
        f"({_fitting_text(meta)}); probe input gradient norm {imported.validation['input_grad_norm']:.3g}"
    )

    metrics = None
    if args.eval is not None:
        bar: Any = None

        def progress(p: Progress) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=p.max_iterations, desc="eval", unit="img")
            bar.update(p.iteration - bar.n)

        try:
            metrics = evaluate_folder(
                imported.detector, args.eval, batch_size=args.batch_size, device=args.device, progress=progress
            )
        except (FileNotFoundError, ValueError) as exc:
            return _error(str(exc))
        finally:
            if bar is not None:
                bar.close()
        print(
            f"eval on {metrics['n']} images: accuracy {metrics['accuracy']:.4f} auroc {metrics['auroc']} "
            f"precision {metrics['precision']} recall {metrics['recall']}"
        )

    calibration = None
    if args.calibrate is not None:
        from models.evaluation.calibration import calibrate, folder_scores, roc_curve, roc_png

        try:
            model = imported.detector.to(args.device).eval()
            val_p, val_y = folder_scores(model, args.calibrate, device=args.device)
            test_p, test_y = folder_scores(model, args.eval, device=args.device) if args.eval else (None, None)
            record = calibrate(val_p, val_y, test_p, test_y, target_fpr=args.target_fpr)
            imported.detector.to("cpu")
        except (FileNotFoundError, ValueError) as exc:
            return _error(str(exc))
        record["fitted_on"]["path"] = str(args.calibrate)
        calibration = record
        test = record.get("test")
        print(
            f"threshold {record['threshold']:.4g} for FPR {args.target_fpr:g} on {args.calibrate}"
            + ("" if test is None else f"; on --eval: AUROC {test['auroc']:.4f} EER {test['eer']:.4f} "
               f"TPR@1% {test['tpr_at_fpr_1pct']:.4f} TPR@5% {test['tpr_at_fpr_5pct']:.4f}")
        )  # fmt: skip
        if args.roc and test_p is not None and test_y is not None:
            fpr, tpr, _ = roc_curve(test_p, test_y)
            print(f"wrote {roc_png({Path(args.out).name: (fpr, tpr)}, args.roc)}")

    argv = list(getattr(args, "cli_argv", None) or sys.argv[1:])
    digest = write(
        imported,
        args.out,
        command=shlex.join(["deepfake-guard", *argv]),
        argv=argv,
        metrics=metrics,
        calibration=calibration,
        extra={"libraries": _versions(), "date": datetime.now(UTC).isoformat(timespec="seconds")},
    )
    print(f"wrote {weights} (sha256 {digest[:12]}) and {meta_path}")
    return 0
