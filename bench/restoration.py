"""Does purification give the detector back its "fake" verdict on attacked fakes, and keep reals real?

On the demo test images (``data/demo/test/{fake,real}``), white-box FGSM (eps 0.02, the paper's) on the
demo ResNet-18, quantised to 8 bits (what a saved image holds). Reported per purifier:

* restored: of the attacked fakes that fooled the detector (now called "real"), the fraction called
  "fake" again after purification (the paper: DIP restored 95%);
* reals kept: of the clean reals the detector calls "real", the fraction still "real" after purification.

A verdict is the arg-max of the two logits. FGSM is computed inline (x + eps * sign(grad CE)) so this
script needs torch and the checkpoint only. With ``--curve`` the ``paper`` run also reports both
fractions at intermediate iterations (snapshots of the same run), which shows where a stop should land.

    python bench/restoration.py --n 10 --paper-iterations 2000 --json out/restoration-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint
from models.detector import FAKE_INDEX, REAL_INDEX, Detector
from models.devices import resolve_device
from models.images import load_image_file, quantize_8bit
from models.purify import PRESETS, PURIFIERS, PURIFIERS_REGISTRY, dip_purify
from models.purify.engine import DipRuntime

#: The one-shot purifiers (every registered one that is not iterative).
CHEAP = [s.name for s in PURIFIERS_REGISTRY if not s.iterative]


def load_folder(folder: Path, n: int) -> tuple[Tensor, list[str]]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"})[:n]
    if not files:
        raise SystemExit(f"no images in {folder}; run: deepfake-guard make-demo-data data/demo")
    return torch.stack([load_image_file(p) for p in files]), [p.name for p in files]


def fgsm(model: Detector, x: Tensor, label: int, eps: float) -> Tensor:
    x = x.clone().requires_grad_(True)
    target = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
    loss = F.cross_entropy(model(x), target)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


@torch.no_grad()
def verdict(model: Detector, x: Tensor, batch: int = 64) -> Tensor:
    return torch.cat([model(x[i : i + batch]).argmax(dim=1) for i in range(0, x.shape[0], batch)])


def fractions(model: Detector, purified: Tensor, n_fooled: int) -> dict[str, Any]:
    v = verdict(model, purified)
    restored = int((v[:n_fooled] == FAKE_INDEX).sum())
    kept = int((v[n_fooled:] == REAL_INDEX).sum())
    n_real = purified.shape[0] - n_fooled
    return {
        "restored": restored / max(n_fooled, 1),
        "restored_count": restored,
        "reals_kept": kept / max(n_real, 1),
        "reals_kept_count": kept,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo/test"))
    parser.add_argument("--checkpoint", default=str(checkpoint.DEMO_CHECKPOINTS / "demo-resnet18"))
    parser.add_argument("--n", type=int, default=10, help="images per class (fakes attacked, reals checked)")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument(
        "--paper-iterations",
        "--iterations",
        dest="paper_iterations",
        type=int,
        default=None,
        help="override the paper preset's 6,000 steps (CPU budgets); stated in the output",
    )
    parser.add_argument("--default-max-iterations", type=int, default=None, help="override the default preset's cap")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["paper", "default", *CHEAP],
        choices=[*PRESETS, *(f"{p}-bf16" for p in PRESETS), *CHEAP],
        help="DIP presets (a -bf16 suffix runs the network in bf16, models.purify.engine) and cheap purifiers",
    )
    parser.add_argument("--curve", type=int, default=500, help="evaluate the paper run every this many steps (0: off)")
    parser.add_argument(
        "--per-image",
        action="store_true",
        help="also write per-image traces and verdicts (to study stopping rules offline)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.n < 1 or not 0 < args.eps < 1:
        raise SystemExit(f"--n must be >= 1 and --eps in (0, 1), got {args.n}, {args.eps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    loaded = checkpoint.load(args.checkpoint)
    model = loaded.detector.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fakes, fake_names = load_folder(args.data / "fake", args.n)
    reals, real_names = load_folder(args.data / "real", args.n)
    fakes, reals = fakes.to(device), reals.to(device)

    clean_fake_ok = verdict(model, fakes) == FAKE_INDEX
    adv = quantize_8bit(fgsm(model, fakes, FAKE_INDEX, args.eps))
    # Only fakes the detector caught before the attack count: their verdict is the one to restore.
    fooled = clean_fake_ok & (verdict(model, adv) == REAL_INDEX)
    reals_ok = verdict(model, reals) == REAL_INDEX
    batch = torch.cat([adv[fooled], reals[reals_ok]])
    n_fooled, n_real = int(fooled.sum()), int(reals_ok.sum())
    print(f"detector {args.checkpoint} (sha256 {loaded.sha256[:12]}), device {device}")
    print(
        f"fakes: {args.n}, detected clean: {int(clean_fake_ok.sum())}, fooled by FGSM eps={args.eps}: {n_fooled}; "
        f"reals: {args.n}, called real: {n_real}"
    )

    if batch.shape[0] == 0:
        raise SystemExit("nothing to purify: no fake fooled the detector and no real was called real")
    rows: dict[str, dict[str, Any]] = {}
    curve: dict[int, dict[str, Any]] = {}
    per_image_verdicts: dict[str, list[int]] = {}
    report = {
        "checkpoint": args.checkpoint,
        "sha256": loaded.sha256,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {
            "n_per_class": args.n,
            "eps": args.eps,
            "attack": "FGSM white-box, 8-bit quantised",
            "paper_iterations": args.paper_iterations or PRESETS["paper"].max_iterations,
            "paper_iterations_cut": args.paper_iterations is not None and args.paper_iterations < 6000,
            "default_max_iterations": args.default_max_iterations or PRESETS["default"].max_iterations,
            "seed": args.seed,
            "data": str(args.data),
        },
        "counts": {
            "fakes": args.n,
            "fakes_detected_clean": int(clean_fake_ok.sum()),
            "fooled": n_fooled,
            "reals": args.n,
            "reals_called_real": n_real,
        },
        "files": {
            "fooled": [n for n, f in zip(fake_names, fooled.tolist(), strict=True) if f],
            "reals": [n for n, r in zip(real_names, reals_ok.tolist(), strict=True) if r],
        },
        "results": rows,
        "paper_curve": {},
        "paper_curve_verdicts": per_image_verdicts,
    }
    for method in args.methods:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        preset = method.removesuffix("-bf16")
        if preset in PRESETS:
            cap = {"paper": args.paper_iterations, "default": args.default_max_iterations}.get(preset)
            wanted = PRESETS[preset].max_iterations if cap is None else cap
            snaps = tuple(range(args.curve, wanted, args.curve)) if method == "paper" and args.curve > 0 else ()
            result = dip_purify(
                batch,
                preset=preset,
                max_iterations=cap,
                seed=args.seed,
                device=device,
                snapshots=snaps,
                runtime=DipRuntime(precision="bf16" if method.endswith("-bf16") else "fp32"),
            )
            extra = {
                "max_iterations": wanted,
                "steps": result.steps,
                "stopped_by": result.stopped_by,
                "iterations_per_image": list(result.iterations),
                "mean_iteration": sum(result.iterations) / len(result.iterations),
                "runtime": result.params["runtime"],
            }
            for it, img in sorted(result.snapshots.items()):
                curve[it] = fractions(model, img.to(device), n_fooled)
                if args.per_image:
                    per_image_verdicts[str(it)] = verdict(model, img.to(device)).tolist()
            if args.per_image:
                extra["psnr_trace"] = {str(k): v for k, v in result.psnr_trace.items()}
                extra["stop_trace"] = {str(k): v for k, v in result.stop_trace.items()}
                extra["verdicts"] = verdict(model, result.image.to(device)).tolist()
        else:
            result = PURIFIERS[method](batch)
            extra = {"params": result.params}
        rows[method] = {
            **fractions(model, result.image.to(device), n_fooled),
            **extra,
            "seconds": time.perf_counter() - started,
        }
        r = rows[method]
        print(
            f"  {method:<9} restored {r['restored_count']}/{n_fooled}  reals kept {r['reals_kept_count']}/{n_real}"
            f"  ({r['seconds']:.0f} s{', steps ' + str(r['steps']) if 'steps' in r else ''})",
            flush=True,
        )
        report["paper_curve"] = {str(k): v for k, v in sorted(curve.items())}
        save_report(args.json, report, complete=False)  # a run stopped at a time limit keeps what it measured

    print(f"\n{'method':<10}{'iterations':>12}{'restored':>10}{'reals kept':>12}{'seconds':>9}")
    print(f"{'none':<10}{'-':>12}{0.0:>10.2f}{1.0:>12.2f}{0:>9}")
    for method, r in rows.items():
        its = f"{r['mean_iteration']:.0f}/{r['max_iterations']}" if "mean_iteration" in r else "-"
        print(f"{method:<10}{its:>12}{r['restored']:>10.2f}{r['reals_kept']:>12.2f}{r['seconds']:>9.0f}")
    if curve:
        print(
            "\npaper run by iteration: "
            + "  ".join(f"{it}: {c['restored']:.2f}/{c['reals_kept']:.2f}" for it, c in sorted(curve.items()))
            + "  (restored/reals kept)"
        )
    save_report(args.json, report, complete=True)
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
