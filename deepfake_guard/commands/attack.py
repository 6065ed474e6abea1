"""``deepfake-guard attack PATH -o OUTDIR``: attack a detector on an image or a folder of images.

Writes each delivered adversarial image (the exact PNG or JPEG that was judged) under OUTDIR, mirroring
the input folder, and ``metrics.csv`` with one row per image (see docs/ATTACKS.md for the semantics).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepfake_guard.commands.argtypes import parse_threshold, positive_int
from deepfake_guard.commands.methods import add_defense_arguments, add_method_arguments, given_defense, given_params

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
CSV_COLUMNS = [
    "file", "target", "source", "method", "save_format", "label_before", "label_after", "success",
    "p_fake_before", "p_fake_after", "source_p_fake_before", "source_p_fake_after", "l2", "linf", "psnr",
    "iterations", "defense", "defense_success_rate", "defense_success_all", "defense_p_fake_after",
]  # fmt: skip


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("attack", help="attack a detector on an image or a folder of images")
    p.add_argument("path", type=Path, help="an image, or a folder searched recursively for images")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for adversarial images and metrics.csv")
    p.add_argument("--target", default="demo-resnet18", help="checkpoint name of the detector to fool")
    p.add_argument("--source", default=None, help="craft on this checkpoint instead (black-box transfer)")
    from models import attacks
    from models.attacks.measure import SAVE_FORMATS
    from models.checkpoint import DEMO_CHECKPOINTS

    add_method_arguments(p, attacks.ATTACKS_REGISTRY, default=attacks.names()[0], skip=frozenset({"targeted"}))
    p.add_argument(
        "--targeted",
        action="store_true",
        help="reach the class --label names (without --label: the other class than the target's clean verdict)",
    )
    add_defense_arguments(p)
    p.add_argument("--save-format", choices=SAVE_FORMATS, default="png", help="what is delivered and judged")
    p.add_argument("--label", choices=("fake", "real"), default=None, help="true label of every image "
                   "(default: attack the detector's own verdict)")  # fmt: skip
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=DEMO_CHECKPOINTS,
        help="folder holding the checkpoints (default: the demo detectors shipped with the package)",
    )
    p.add_argument("--batch", type=positive_int, default=8, help="images attacked together (same size only)")
    p.add_argument(
        "--threshold", type=parse_threshold, default=None,
        help="the target's operating threshold on p_fake (default: its checkpoint's fitted one, else 0.5, as /detect)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seeds the PGD and CW random starts")
    p.add_argument("--perturbation", action="store_true", help="also write amplified perturbation pictures")


def find_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither an image file nor a folder")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models import attacks, checkpoint
    from models.attacks.adaptive import resolve_defense
    from models.attacks.measure import attack_and_measure, perturbation_picture
    from models.detector import CLASS_NAMES
    from models.devices import resolve_device
    from models.images import ImageError, load_image_file, save_png
    from models.progress import Progress

    try:
        device = resolve_device(args.device)
        files = find_images(args.path)
        spec = attacks.get(args.method)
        params = given_params(args, spec)
        if args.targeted:
            if not spec.declares("targeted"):
                raise ValueError(f"--method {spec.name} has no targeted mode")
            params["targeted"] = True
        spec.resolve(params)  # fail before loading anything
        defense = resolve_defense(given_defense(args))
        target_ck = checkpoint.load(args.checkpoints / args.target, map_location=device)
        source_ck = checkpoint.load(args.checkpoints / args.source, map_location=device) if args.source else None
    except (OSError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc}")
        return 2
    if not files:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {args.path}")
        return 2
    target, source = target_ck.detector, None if source_ck is None else source_ck.detector
    # The verdicts /detect would give: the target's threshold (--threshold, else its checkpoint's, else 0.5).
    threshold, _ = target_ck.meta.operating_point(args.threshold)
    source_threshold = None if source_ck is None else source_ck.meta.operating_point()[0]
    root = args.path if args.path.is_dir() else args.path.parent
    suffix = ".png" if args.save_format == "png" else ".jpg"
    generator = torch.Generator(device=device).manual_seed(args.seed)
    label = None if args.label is None else CLASS_NAMES.index(args.label)

    bar = tqdm(total=len(files), desc=f"{args.method} on {args.target}", unit="img", dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        bar.set_postfix(step=f"{p.iteration}/{p.max_iterations}", loss=f"{p.loss:.3g}")

    rows: list[dict[str, Any]] = []
    for batch_files, x in _batches(files, args.batch, load_image_file, ImageError, bar):
        x = x.to(device)
        y = None if label is None else torch.full((len(x),), label, dtype=torch.long, device=device)
        reports = attack_and_measure(
            args.method, target, x, source=source, params=params, save_format=args.save_format, y=y,
            defense=defense, progress=on_progress, generator=generator, threshold=threshold,
            source_threshold=source_threshold,
        )  # fmt: skip
        for file, x_i, report in zip(batch_files, x, reports, strict=True):
            out = (args.output / file.relative_to(root)).with_suffix(suffix)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(report.encoded)
            if args.perturbation:
                save_png(perturbation_picture(x_i.cpu(), report.adv), out.with_name(f"{out.stem}.perturbation.png"))
            rows.append({"file": str(file.relative_to(root)), "target": args.target, "source": args.source or "",
                         "threshold": threshold, **report.metrics(), **_defense_columns(report.defense)})  # fmt: skip
        bar.update(len(batch_files))
    bar.close()
    skipped = len(files) - len(rows)

    args.output.mkdir(parents=True, exist_ok=True)
    with (args.output / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS} for row in rows)
    fooled = sum(bool(r["success"]) for r in rows)
    through = "" if defense is None else f", through {defense.purifier} as the defender judges it"
    print(
        f"fooled {args.target} on {fooled}/{len(rows)} images ({args.method}, delivered as {args.save_format}"
        f"{', crafted on ' + args.source if args.source else ''}{through}); wrote {args.output / 'metrics.csv'}"
        + (f"; skipped {skipped} unreadable" if skipped else "")
    )
    return 0


def _defense_columns(outcome: dict[str, Any] | None) -> dict[str, Any]:
    """An adaptive attack's verdicts through the defence, flat for the CSV (``success`` is then ``success_any``)."""
    if outcome is None:
        return {"defense": None, "defense_success_rate": None, "defense_success_all": None,
                "defense_p_fake_after": None}  # fmt: skip
    return {
        "defense": outcome["purifier"],
        "defense_success_rate": outcome["success_rate"],
        "defense_success_all": outcome["success_all"],
        "defense_p_fake_after": " ".join(f"{p:.4f}" for p in outcome["p_fake_after"]),
    }


def _batches(files: list[Path], size: int, load: Any, error: type[Exception], bar: Any) -> Iterator[tuple[list, Any]]:
    """Consecutive readable images of one size, up to ``size`` at a time (images of any size are accepted)."""
    import torch

    pending: list[tuple[Path, Any]] = []
    for file in files:
        try:
            image = load(file)
        except (OSError, error) as exc:
            bar.write(f"skipping {file}: {exc}")
            bar.update(1)
            continue
        if pending and (len(pending) == size or pending[0][1].shape != image.shape):
            yield [p for p, _ in pending], torch.stack([t for _, t in pending])
            pending = []
        pending.append((file, image))
    if pending:
        yield [p for p, _ in pending], torch.stack([t for _, t in pending])
