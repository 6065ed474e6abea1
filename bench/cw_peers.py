"""CW-L2 beside two peer libraries at equal budget: foolbox's L2CarliniWagnerAttack and ART's CarliniL2Method.

Each configuration attacks the same demo test fakes (the first ``--n`` the detector calls fake) on each demo
detector with the same search steps, iterations per step, kappa (the peers' ``confidence``), initial c and learning
rate (foolbox's Adam ``stepsize``; ART's ``learning_rate`` is the first step of its line search, it has no Adam).
Our rows run ``models.attacks.cw_l2`` with the ``default`` preset and the overrides in ``CONFIGS``.

Every image is judged here, the same way for all three:

* float: the returned tensor succeeds by the attacks' own criterion, ``cw_success`` (another logit beats the true one
  by more than kappa). foolbox returns an all-zero image where it found nothing, ART the clean input: both count as
  failures (the library's own claim is kept as ``claimed_success``: foolbox judges the zero image too);
* png: the 8-bit PNG a user would receive (``models.attacks.measure.deliver``) is no longer called fake;
* L2 is measured against the clean input: of the successes, and over all images with failures at infinity (a median
  over all that is ``null`` means at most half succeeded);
* ``grad_calls_per_image``: forward passes with autograd per image (one backward each), counted by wrapping the
  detector; ``forward_calls_per_image``: forward passes without (ART's line search); ``iterations_per_image``: ours
  from ``CWResult.iterations`` (its early abort is per image), foolbox's and ART's equal the gradient calls (ART: half,
  it takes two class gradients per iteration).

A peer that is not importable is skipped (listed under ``skipped``); the script runs with torch alone.
docs/results/cw-peers-cpu.json holds this command's output on a 2-core CPU machine:

    PYTHONPATH=.:/work/peers python bench/cw_peers.py --data data/demo/test --n 16 --json docs/results/cw-peers-cpu.json
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint
from models.attacks import CW_PRESETS, cw_l2
from models.attacks.cw import cw_success
from models.attacks.measure import deliver
from models.detector import FAKE_INDEX
from models.images import load_image_file

#: name -> (library, overrides of our ``default`` preset; the peers read kappa, c_init and lr from the result)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "ours lr 0.05": ("ours", {"lr": 0.05}),  # the default preset's until bench/cw_peers.py measured lr 0.01
    "ours lr 0.01": ("ours", {"lr": 0.01}),
    "ours lr 0.05, rounding finish": ("ours", {"lr": 0.05, "round_finish": True}),
    "ours lr 0.01, rounding finish": ("ours", {"lr": 0.01, "round_finish": True}),
    "foolbox lr 0.05": ("foolbox", {"lr": 0.05}),
    "foolbox lr 0.01": ("foolbox", {"lr": 0.01}),
    "art lr 0.05": ("art", {"lr": 0.05}),
    "art lr 0.01": ("art", {"lr": 0.01}),
}
#: the module each peer needs, and its distribution (for the version in the report)
PEERS: dict[str, tuple[str, str]] = {
    "foolbox": ("foolbox", "foolbox"),
    "art": ("art.attacks.evasion", "adversarial-robustness-toolbox"),
}


class Counted(nn.Module):
    """The detector, counting the rows it sees with autograd (gradient calls) and without (plain forwards)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.grad_rows = 0
        self.plain_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_rows += len(x)
        else:
            self.plain_rows += len(x)
        out: Tensor = self.net(x)
        return out


def peer_version(library: str) -> str | None:
    """The peer's version if it imports, None otherwise."""
    module, dist = PEERS[library]
    try:
        importlib.import_module(module)
    except Exception:  # any import failure (missing package, missing dependency) skips the peer
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def run_foolbox(model: Counted, x: Tensor, y: Tensor, p: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """(adv, found, claimed). foolbox returns zeros where it found nothing (foolbox/attacks/carlini_wagner.py,
    ``best_advs = ep.zeros_like(x)``) and claims success by plain misclassification of whatever it returns."""
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    attack = fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=p["search_steps"], steps=p["max_iterations"], stepsize=p["lr"],
        confidence=p["kappa"], initial_const=p["c_init"], abort_early=True,
    )  # fmt: skip
    raw, _, claimed = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    found = raw.flatten(1).abs().amax(dim=1) > 0
    return raw.detach(), found, claimed.detach()


def run_art(model: Counted, x: Tensor, y: Tensor, p: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """(adv, found, claimed). ART returns the clean input where it found nothing; found = changed."""
    from art.attacks.evasion import CarliniL2Method
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=2,
        clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu",
    )  # fmt: skip
    attack = CarliniL2Method(
        classifier, confidence=p["kappa"], targeted=False, learning_rate=p["lr"],
        binary_search_steps=p["search_steps"], max_iter=p["max_iterations"], initial_const=p["c_init"],
        batch_size=len(x), verbose=False,
    )  # fmt: skip
    adv = torch.from_numpy(attack.generate(x.cpu().numpy(), y=y.cpu().numpy())).to(x.device)
    found = (adv != x).flatten(1).any(dim=1)
    return adv, found, found


def median_or_none(values: list[float]) -> float | None:
    if not values:
        return None
    m = statistics.median(values)
    return m if math.isfinite(m) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/demo/test"), help="folder with fake/ and real/")
    parser.add_argument("--n", type=int, default=16, help="fakes per detector (the first n the detector catches)")
    parser.add_argument("--checkpoints", type=Path, default=checkpoint.DEMO_CHECKPOINTS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--search-steps", type=int, default=None, help="binary-search steps (default: the preset's)")
    parser.add_argument("--iterations", type=int, default=None, help="iterations per step (default: the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted((args.data / "fake").glob("*.png"))
    if not files:
        raise SystemExit(f"no fakes under {args.data}/fake; run: deepfake-guard make-demo-data data/demo --splits test")
    images = torch.stack([load_image_file(p) for p in files])
    base = dict(CW_PRESETS["default"])
    if args.search_steps is not None:
        base["search_steps"] = args.search_steps
    if args.iterations is not None:
        base["max_iterations"] = args.iterations
    versions = {lib: peer_version(lib) for lib in PEERS}
    skipped = [{"library": lib, "reason": "not importable"} for lib, v in versions.items() if v is None]
    for s in skipped:
        print(f"skipping {s['library']}: not importable (install it, or add its folder to PYTHONPATH)", flush=True)
    configs = [c for c in args.configs if CONFIGS[c][0] == "ours" or versions[CONFIGS[c][0]] is not None]
    report: dict[str, Any] = {
        "device": args.device if args.device != "cpu" else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": base,
        "peers": versions,
        "skipped": skipped,
        "rows": [],
    }
    header = f"{'detector':<15} {'configuration':<30} {'float':>7} {'png':>7} {'L2 png':>7} {'L2 all':>7}"
    print(f"{header} {'grads':>6} {'iters':>6} {'s/img':>6}", flush=True)
    detectors = {
        name: checkpoint.load(args.checkpoints / f"{name}.safetensors").detector.eval().to(args.device)
        for name in ("demo-resnet18", "demo-vgg16")
    }
    batches = {name: det.called_fake(images.to(args.device), args.n) for name, det in detectors.items()}
    # Ours first, the peers after: a run cut short by its time limit keeps the cheaper rows of both detectors.
    for label in configs:
        library, overrides = CONFIGS[label]
        params = {**base, **overrides}
        for name, det in detectors.items():
            x = batches[name]
            n = len(x)
            y = torch.full((n,), FAKE_INDEX, dtype=torch.long, device=x.device)
            model = Counted(det).eval()
            torch.manual_seed(0)
            started = time.perf_counter()
            if library == "ours":
                result = cw_l2(model, x, y, **params)
                adv, found, claimed = result.adv, result.success, result.success
                iterations = float(result.iterations.float().mean())
            elif library == "foolbox":
                adv, found, claimed = run_foolbox(model, x, y, params)
                iterations = model.grad_rows / n
            else:
                adv, found, claimed = run_art(model, x, y, params)
                iterations = model.grad_rows / n / 2
            seconds = time.perf_counter() - started
            adv = torch.where(found[:, None, None, None], adv, x)
            with torch.no_grad():
                fooled_float = found & cw_success(det(adv).float(), y, kappa=params["kappa"], targeted=False)
                png, _ = deliver(adv, "png")
                fooled_png = (det.p_fake(png.to(x.device)) < 0.5).cpu()
            l2_float = (adv - x).flatten(1).norm(dim=1).cpu()
            l2_png = (png - x.cpu()).flatten(1).norm(dim=1)
            fooled_float = fooled_float.cpu()
            row = {
                "detector": name, "configuration": label, "library": library, "params": params, "n": n,
                "claimed_success": int(claimed.sum()),
                "float_success": int(fooled_float.sum()), "png_success": int(fooled_png.sum()),
                "float_success_rate": float(fooled_float.float().mean()),
                "png_success_rate": float(fooled_png.float().mean()),
                "median_l2_float": median_or_none(l2_float[fooled_float].tolist()),
                "median_l2_png": median_or_none(l2_png[fooled_png].tolist()),
                "median_l2_png_all": median_or_none(torch.where(fooled_png, l2_png, math.inf).tolist()),
                "grad_calls_per_image": model.grad_rows / n,
                "forward_calls_per_image": model.plain_rows / n,
                "iterations_per_image": iterations,
                "seconds_per_image": seconds / n,
            }  # fmt: skip
            report["rows"].append(row)
            save_report(args.json, report, complete=False)

            def fmt(v: float | None) -> str:
                return f"{v:>7.3f}" if v is not None else f"{'-':>7}"

            print(
                f"{name:<15} {label:<30} {row['float_success']:>3}/{n:<3} {row['png_success']:>3}/{n:<3} "
                f"{fmt(row['median_l2_png'])} {fmt(row['median_l2_png_all'])} {row['grad_calls_per_image']:>6.0f} "
                f"{row['iterations_per_image']:>6.0f} {row['seconds_per_image']:>6.2f}",
                flush=True,
            )
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
