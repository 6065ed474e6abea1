"""Time DIP purification: milliseconds per optimisation step and seconds per image, per preset.

Runs with torch alone (CPU or CUDA). A fixed number of steps is timed (with CUDA synchronised) and
extrapolated to each preset's step count: 6,000 for ``paper``; the 3,000-step cap for ``default``,
whose auto stop usually ends earlier (see docs/PURIFICATION.md). Also times the cheap purifiers.

    python bench/purify.py                          # 512 px on CUDA, 128 px on CPU
    python bench/purify.py --size 512 --batch 1 8 --json out/bench-purify.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.purify import PRESETS, PURIFIERS, dip_purify


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_dip(preset: str, x: torch.Tensor, iterations: int, device: torch.device) -> dict[str, Any]:
    dip_purify(x, preset=preset, max_iterations=min(10, iterations), stop="fixed", device=device)  # warm-up
    _sync(device)
    started = time.perf_counter()
    result = dip_purify(x, preset=preset, max_iterations=iterations, device=device)
    _sync(device)
    seconds = time.perf_counter() - started
    ms_step = 1000 * seconds / result.steps
    full = PRESETS[preset].max_iterations
    return {
        "method": "dip",
        "preset": preset,
        "batch": x.shape[0],
        "steps_timed": result.steps,
        "ms_per_step": ms_step,
        "ms_per_step_per_image": ms_step / x.shape[0],
        "steps_per_image": full,
        "seconds_per_image": ms_step * full / 1000 / x.shape[0],
    }


def time_cheap(name: str, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    PURIFIERS[name](x)
    started = time.perf_counter()
    for _ in range(repeats):
        PURIFIERS[name](x)
    seconds = (time.perf_counter() - started) / repeats
    return {"method": name, "batch": x.shape[0], "seconds_per_image": seconds / x.shape[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512 on CUDA, 128 on CPU)")
    parser.add_argument("--iterations", type=int, default=None, help="steps to time (default 200 on CUDA, 40 on CPU)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="images per run (default 1 8 on CUDA, 1 on CPU)"
    )
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    device = torch.device(name)
    cuda = device.type == "cuda"
    size = args.size or (512 if cuda else 128)
    iterations = args.iterations or (200 if cuda else 40)
    batches = args.batch or ([1, 8] if cuda else [1])
    if size < 1 or iterations < 1 or min(batches) < 1:
        raise SystemExit(f"--size, --iterations and --batch must be positive, got {size}, {iterations}, {batches}")

    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        x = torch.rand(batch, 3, size, size, generator=gen)
        for preset in args.presets:
            rows.append(time_dip(preset, x, iterations, device))
    x = torch.rand(1, 3, size, size, generator=gen)
    for cheap in ("jpeg", "median", "bitdepth"):
        rows.append(time_cheap(cheap, x, repeats=5))

    print(
        f"device={device} ({torch.cuda.get_device_name(device) if cuda else platform.processor() or 'cpu'}), "
        f"torch {torch.__version__}, {size}x{size}, {iterations} steps timed"
    )
    print(f"{'method':<9}{'preset':<9}{'batch':>6}{'ms/step':>10}{'ms/step/img':>13}{'steps':>7}{'s/image':>10}")
    for r in rows:
        if r["method"] == "dip":
            print(
                f"{'dip':<9}{r['preset']:<9}{r['batch']:>6}{r['ms_per_step']:>10.2f}{r['ms_per_step_per_image']:>13.2f}"
                f"{r['steps_per_image']:>7}{r['seconds_per_image']:>10.1f}"
            )
        else:
            print(f"{r['method']:<9}{'-':<9}{r['batch']:>6}{'':>10}{'':>13}{'':>7}{r['seconds_per_image']:>10.4f}")
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": {"size": size, "iterations_timed": iterations, "batches": batches, "presets": args.presets},
        "note": "default: seconds_per_image uses the 3,000-step cap (an upper bound; the auto stop may end earlier)",
        "results": rows,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
