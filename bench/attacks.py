"""Time the attacks: images per second, batched vs a batch-1 loop vs torchattacks, side by side in one run.

Runs with torch alone (CPU or CUDA); torchattacks is optional (its column is skipped when absent). Uses the
demo detectors from ``--checkpoints`` when present, else a randomly initialised ResNet-18 at ``--size`` px.
CW-L2 runs a fixed budget (one search step, ``--cw-iters`` iterations, no early abort) so every column does
the same work. torchattacks.CW gets the same step count but returns early when its summed loss rises at one
of its checks (every steps // 10), which it cannot be told not to do; the script counts the steps it really
ran and also reports the ratio per image-iteration ("ours/t.a. per it"), which is the like-for-like one.
Both CW columns report their success rate (arg-max moved off the label, judged in float).

    python bench/attacks.py                                  # CPU: batch 16, CW 100 iterations
    python bench/attacks.py --device cuda --batch 32 --cw-iters 1000 --json out/bench-attacks.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint, registry
from models.attacks import CW_L2, FGSM, PGD, cw_l2, fgsm, pgd
from models.devices import resolve_device

try:
    import torchattacks
except ImportError:  # optional peer column
    torchattacks = None

EPS, PGD_STEPS, PGD_STEP_SIZE = 0.02, 10, 0.005
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(name: str, cw_iters: int) -> Attack:
    if name == FGSM.name:
        return lambda m, x, y: fgsm(m, x, y, eps=EPS)
    if name == PGD.name:
        return lambda m, x, y: pgd(m, x, y, eps=EPS, steps=PGD_STEPS, step_size=PGD_STEP_SIZE)
    budget: dict[str, Any] = dict(
        kappa=0.0, c_init=1.0, search_steps=1, max_iterations=cw_iters, lr=0.01, abort_early=False
    )
    return lambda m, x, y: cw_l2(m, x, y, **budget).adv


class Counted(nn.Module):
    """Counts forward calls: how many iterations a peer attack really ran."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.model(x)  # type: ignore[no-any-return]


@torch.no_grad()
def success_rate(model: nn.Module, adv: Tensor, y: Tensor) -> float:
    return float((model(adv).argmax(dim=1) != y).float().mean())


def theirs(name: str, model: nn.Module, cw_iters: int) -> Attack | None:
    if torchattacks is None:
        return None
    if name == FGSM.name:
        attack = torchattacks.FGSM(model, eps=EPS)
    elif name == PGD.name:
        attack = torchattacks.PGD(model, eps=EPS, alpha=PGD_STEP_SIZE, steps=PGD_STEPS, random_start=True)
    else:
        attack = torchattacks.CW(model, c=1.0, kappa=0, steps=cw_iters, lr=0.01)
    return lambda m, x, y: attack(x, y)  # type: ignore[no-any-return]


def seconds(fn: Callable[[], Any], device: torch.device, repeats: int, keep: list[Any] | None = None) -> float:
    """Best of ``repeats`` wall-clock runs, with CUDA synchronised around each; ``keep`` gets the last result."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    if keep is not None:
        keep.append(result)
    return best


def detectors(args: argparse.Namespace, device: torch.device) -> dict[str, nn.Module]:
    size = (args.size, args.size)
    if args.arch:  # randomly initialised registry architectures (speed does not depend on the weights)
        return {
            f"{a}@{args.size}px (random init)": registry.get(a).build(input_size=size).to(device).eval()
            for a in args.arch
        }
    found = {}
    for name in ("demo-resnet18", "demo-vgg16"):
        path = Path(args.checkpoints) / f"{name}.safetensors"
        if path.exists():
            found[name] = checkpoint.load(path, map_location=device).detector
    if not found:
        found[f"resnet18@{args.size}px (random init)"] = registry.get("resnet18").build(input_size=size).to(device)
    return {k: m.eval() for k, m in found.items()}


def bench_attack(
    name: str, label: str, model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    repeats = 1 if name == CW_L2.name else args.repeats
    loop_n = min(args.loop_images, len(x))
    attack = ours(name, args.cw_iters)
    attack(model, x[:2], y[:2])  # warm-up (allocations, cuDNN autotune, lazy imports)

    def one_by_one() -> None:
        for i in range(loop_n):
            attack(model, x[i : i + 1], y[i : i + 1])

    ours_adv: list[Tensor] = []
    batched = seconds(lambda: attack(model, x, y), device, repeats, keep=ours_adv)
    row: dict[str, Any] = {
        "model": label,
        "attack": name if name != PGD.name else f"{PGD.name}-{PGD_STEPS}",
        "iterations": {FGSM.name: 1, PGD.name: PGD_STEPS, CW_L2.name: args.cw_iters}[name],
        "batch": len(x),
        "ours_batched_img_s": len(x) / batched,
        "ours_loop_img_s": loop_n / seconds(one_by_one, device, repeats),
        "torchattacks_img_s": None,
        "ours_over_torchattacks": None,
    }
    row["batched_over_loop"] = row["ours_batched_img_s"] / row["ours_loop_img_s"]
    if name == CW_L2.name:
        row["ours_success"] = success_rate(model, ours_adv[0], y)
    # The peer twice: as it runs by default (its backward also computes the weights' gradients, which ours never
    # asks for), and with the weights frozen on its side, which leaves the attack loops themselves to compare.
    for key, frozen in (("", False), ("_frozen", True)):
        counted = Counted(model)
        peer = theirs(name, counted, args.cw_iters)
        if peer is None:
            break
        flags = [p.requires_grad for p in model.parameters()]
        if frozen:
            model.requires_grad_(False)
        try:
            peer(counted, x[:2], y[:2])
            counted.calls = 0
            peer_adv: list[Tensor] = []
            img_s = len(x) / seconds(lambda: peer(counted, x, y), device, repeats, keep=peer_adv)  # noqa: B023
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        row[f"torchattacks{key}_img_s"] = img_s
        row[f"ours_over_torchattacks{key}"] = row["ours_batched_img_s"] / img_s
        if name == CW_L2.name:
            ran = counted.calls // repeats
            row[f"torchattacks{key}_iterations"] = ran
            row[f"torchattacks{key}_success"] = success_rate(model, peer_adv[0], y)
            row[f"ours_over_torchattacks{key}_per_iteration"] = (row["ours_batched_img_s"] * args.cw_iters) / (
                img_s * max(ran, 1)
            )
    return row


def bench_model(
    label: str, model: nn.Module, args: argparse.Namespace, device: torch.device
) -> Iterator[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    for name in (FGSM.name, PGD.name, CW_L2.name):
        row = bench_attack(name, label, model, x, y, args, device)
        print(_format(row), flush=True)
        yield row


HEADER = (
    f"{'model':<28} {'attack':<7} {'iters':>5} {'batched':>9} {'batch-1':>9} {'t.attacks':>9} "
    f"{'batch/loop':>10} {'ours/t.a.':>9}   (images/s; ours / t.a. with its weights frozen; CW: t.a. iterations"
    " run, ratio per it, success)"
)


def _format(row: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    line = (
        f"{row['model']:<28} {row['attack']:<7} {row['iterations']:>5} {num(row['ours_batched_img_s'], '9.1f')} "
        f"{num(row['ours_loop_img_s'], '9.1f')} {num(row['torchattacks_img_s'], '>9.1f')} "
        f"{num(row['batched_over_loop'], '>9.2f')}x {num(row['ours_over_torchattacks'], '>8.2f')}x"
    )
    if "ours_over_torchattacks_frozen" in row:
        line += f" frozen t.a. {row['ours_over_torchattacks_frozen']:.2f}x"
    if "torchattacks_iterations" in row:
        line += (
            f"   t.a. ran {row['torchattacks_iterations']} it,"
            f" per it {row['ours_over_torchattacks_per_iteration']:.2f}x"
            f" (frozen {row['ours_over_torchattacks_frozen_per_iteration']:.2f}x)"
            f", success ours {row['ours_success']:.2f} t.a. {row['torchattacks_success']:.2f}"
        )
    elif "ours_success" in row:
        line += f"   success ours {row['ours_success']:.2f}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched runs")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--cw-iters", type=int, default=None, help="CW iterations (default 100 CPU, 1000 CUDA)")
    parser.add_argument("--loop-images", type=int, default=None, help="images in the batch-1 loop (default 4 / 16)")
    parser.add_argument("--repeats", type=int, default=3, help="FGSM/PGD timings keep the best of this many")
    parser.add_argument(
        "--checkpoints", default=str(checkpoint.DEMO_CHECKPOINTS), help="folder holding the demo detectors"
    )
    parser.add_argument(
        "--arch", nargs="+", default=None, help="time these registry architectures instead (e.g. resnet50 vgg16)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    args.cw_iters = args.cw_iters or (1000 if on_gpu else 100)
    args.loop_images = args.loop_images or (16 if on_gpu else 4)
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    info = {
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchattacks": getattr(torchattacks, "__version__", None),
    }
    print(f"# {info}", flush=True)
    print(HEADER, flush=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(eps=EPS, pgd_steps=PGD_STEPS, pgd_step_size=PGD_STEP_SIZE)
    rows: list[dict[str, Any]] = []
    # summary.py finds the CW rows by this name (it reads JSON and imports nothing of the project).
    report = {**info, "config": config, "cw_attack": CW_L2.name, "rows": rows}
    for label, model in detectors(args, device).items():
        for row in bench_model(label, model, args, device):
            rows.append(row)
            save_report(args.json, report, complete=False)  # a run stopped at a time limit keeps its rows
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
