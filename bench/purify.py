"""Time DIP purification: each execution engine against the eager reference, side by side in one run.

Runs with torch alone (CPU or CUDA). For every batch size and engine configuration it times a short and a
long run of the same preset and reports

* ms per step from the difference of the two (steady state), and the set-up cost (graph capture etc.);
* seconds per image and images per second at the paper preset's 6,000 steps, the default preset's
  3,000-step cap (its auto stop may end earlier: docs/PURIFICATION.md) and the early preset's 1,000;
* the speed-up over the eager reference at the same batch, and how far the output is from the
  reference's (PSNR in dB between the two results after the long run; inf = identical).

``--latency`` then runs one image end to end with the chosen configuration (``--latency-presets``: early,
default and paper), before any batch sweep; ``--latency-only`` skips the sweep. The JSON is rewritten after
every row, so a run stopped at a time limit keeps what it measured (``"complete": false``).

    python bench/purify.py                          # 512 px on CUDA, 128 px on CPU
    python bench/purify.py --size 512 --batch 1 8 32 --json out/bench-purify.json
    python bench/purify.py --latency fast --latency-only --json out/bench-latency.json
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models.devices import resolve_device
from models.images import psnr
from models.purify import PRESETS, PURIFIERS, PURIFIERS_REGISTRY, dip_purify
from models.purify.engine import DipRuntime

# Most telling first: a run cut off by its time limit loses the last (the JSON is rewritten after every row).
CONFIGS: dict[str, DipRuntime] = {
    "reference": DipRuntime(engine="reference"),
    "fast": DipRuntime(),
    "fast-bf16-nhwc": DipRuntime(precision="bf16", channels_last=True),
    "fast-bf16": DipRuntime(precision="bf16"),
    "fast-nhwc": DipRuntime(channels_last=True),
    "fast-eager": DipRuntime(cuda_graphs=False),
}
PAPER_STEPS = PRESETS["paper"].max_iterations
DEFAULT_CAP = PRESETS["default"].max_iterations
EARLY_STEPS = PRESETS["early"].max_iterations


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_run(x: torch.Tensor, steps: int, runtime: DipRuntime, device: torch.device) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    # A fixed step count: the auto stop could end a timed run early. The stop statistics are computed either way.
    result = dip_purify(x, preset="default", max_iterations=steps, stop="fixed", runtime=runtime, device=device)
    _sync(device)
    if result.steps != steps:
        raise RuntimeError(f"asked for {steps} steps, ran {result.steps}")
    return time.perf_counter() - started, result


def time_config(
    name: str, x: torch.Tensor, steps: int, short: int, device: torch.device, reference: torch.Tensor | None
) -> dict[str, Any]:
    runtime = CONFIGS[name]
    timed_run(x, short, runtime, device)  # warm-up: cuDNN/autograd initialisation, allocator
    t_short, _ = timed_run(x, short, runtime, device)
    t_long, result = timed_run(x, steps, runtime, device)
    ms_step = 1000 * (t_long - t_short) / (steps - short)
    batch = x.shape[0]
    per_image = ms_step / batch
    if name == "reference":
        agreement = float("inf")
    elif reference is None:  # the reference did not run (out of memory): quality unknown, so not counted
        agreement = math.nan
    else:
        agreement = float(psnr(result.image, reference).min())
    return {
        "config": name,
        "batch": batch,
        "runtime": result.params["runtime"],
        "ms_per_step": ms_step,
        "ms_per_image_step": per_image,
        "setup_s": max(t_short - short * ms_step / 1000, 0.0),
        "paper_s_per_image": per_image * PAPER_STEPS / 1000,
        "default_cap_s_per_image": per_image * DEFAULT_CAP / 1000,
        "paper_images_per_s": 1000 / (per_image * PAPER_STEPS),
        "early_s_per_image": per_image * EARLY_STEPS / 1000,
        "early_images_per_s": 1000 / (per_image * EARLY_STEPS),
        "psnr_to_reference_db": agreement,
        "image": result.image,
    }


def time_cheap(name: str, x: torch.Tensor, repeats: int) -> dict[str, Any]:
    PURIFIERS[name](x)
    started = time.perf_counter()
    for _ in range(repeats):
        PURIFIERS[name](x)
    seconds = (time.perf_counter() - started) / repeats
    return {"method": name, "batch": x.shape[0], "seconds_per_image": seconds / x.shape[0]}


def test_image(size: int) -> torch.Tensor:
    """A smooth picture plus +-8/255 sign noise (an FGSM-like perturbation): what DIP is run on."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    noise = torch.randint(0, 2, smooth.shape, generator=gen).float() * 2 - 1
    return (smooth + noise * 8 / 255).clamp(0, 1)


def latency(name: str, preset: str, x: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """One image end to end (set-up, graph capture, every step, the result back on the host)."""
    _sync(device)
    started = time.perf_counter()
    result = dip_purify(x, preset=preset, runtime=CONFIGS[name], device=device)
    _sync(device)
    return {
        "config": name,
        "preset": preset,
        "steps": result.steps,
        "stopped_by": result.stopped_by,
        "seconds": time.perf_counter() - started,
        "psnr_to_input_db": float(psnr(result.image, x).mean()),
        "runtime": result.params["runtime"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512 on CUDA, 128 on CPU)")
    parser.add_argument("--iterations", type=int, default=None, help="steps of the long run (default 200 CUDA, 30 CPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="images per run (default 1 8 CUDA, 1 CPU)")
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS), help="default: all that apply")
    parser.add_argument("--latency", default=None, choices=sorted(CONFIGS), help="also run one image end to end")
    parser.add_argument("--latency-presets", nargs="+", default=["early", "default", "paper"], choices=sorted(PRESETS))
    parser.add_argument("--latency-only", action="store_true", help="with --latency: no batch sweep")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick algorithms by timing them")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    size = args.size or (512 if cuda else 128)
    steps = args.iterations or (200 if cuda else 30)
    short = max(steps // 10, 5)
    batches = args.batch or ([1, 8] if cuda else [1])
    # Without CUDA, "fast" is the eager fast engine: "fast-eager" would time the same thing twice.
    configs = args.configs or [c for c in CONFIGS if cuda or c != "fast-eager"]
    if "reference" not in configs:
        configs = ["reference", *configs]
    if size < 1 or steps <= short or min(batches) < 1:
        raise SystemExit(f"--size and --batch must be positive and --iterations > {short}")
    if args.latency_only and args.latency is None:
        raise SystemExit("--latency-only needs --latency CONFIG")
    if args.latency_only:
        batches = []
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(f"device={device} ({device_name}), torch {torch.__version__}, {size}x{size}, steps {short} and {steps}")

    rows: list[dict[str, Any]] = []
    latency_rows: list[dict[str, Any]] = []
    cheap: list[dict[str, Any]] = []
    report = {
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cudnn_benchmark": args.cudnn_benchmark,
        "config": {"size": size, "steps_long": steps, "steps_short": short, "batches": batches, "preset": "default"},
        "note": "seconds per image extrapolate the steady ms/step to 6,000 (paper), 3,000 (default cap) and 1,000 "
        "(early) steps; the paper took ~1,800 s per image (10,000 steps on a K80)",
        "results": rows,
        "latency": latency_rows,
        "cheap": cheap,
    }
    for preset in args.latency_presets if args.latency else []:
        r = latency(args.latency, preset, test_image(size), device)
        latency_rows.append(r)
        save_report(args.json, report, complete=False)
        print(
            f"latency {r['config']} {r['preset']}: one {size}px image {r['seconds']:.1f} s "
            f"({r['steps']} steps, {r['stopped_by']}; paper took ~1,800 s)",
            flush=True,
        )
    gen = torch.Generator().manual_seed(0)
    head = f"{'config':<16}{'batch':>6}{'ms/step':>9}{'ms/img-step':>12}{'setup s':>9}{'paper s/img':>12}"
    print(head + f"{'img/s paper':>12}{'img/s early':>12}{'vs ref':>8}{'dB to ref':>10}")
    for batch in batches:
        x = torch.rand(batch, 3, size, size, generator=gen)
        reference: torch.Tensor | None = None
        ref_ms = math.nan
        for config in configs:
            try:
                row = time_config(config, x, steps, short, device, reference)
            except torch.OutOfMemoryError:
                print(f"{config:<16}{batch:>6}  out of memory")
                torch.cuda.empty_cache()
                continue
            image = row.pop("image")
            if config == "reference":
                reference, ref_ms = image, row["ms_per_step"]
            row["speedup_vs_reference"] = ref_ms / row["ms_per_step"]
            rows.append(row)
            save_report(args.json, report, complete=False)
            print(
                f"{config:<16}{batch:>6}{row['ms_per_step']:>9.2f}{row['ms_per_image_step']:>12.3f}{row['setup_s']:>9.2f}"
                f"{row['paper_s_per_image']:>12.1f}{row['paper_images_per_s']:>12.3f}{row['early_images_per_s']:>12.3f}"
                f"{row['speedup_vs_reference']:>7.1f}x{row['psnr_to_reference_db']:>10.1f}",
                flush=True,
            )
    for r in rows + latency_rows:
        if "cuda_graphs_error" in r["runtime"]:
            print(f"!!! {r['config']}: CUDA graph capture failed, ran eagerly: {r['runtime']}")
    if not args.latency_only:
        x1 = torch.rand(1, 3, size, size, generator=gen)
        cheap += [time_cheap(c, x1, repeats=5) for c in (s.name for s in PURIFIERS_REGISTRY if not s.iterative)]
        print("cheap purifiers, s/image: " + ", ".join(f"{c['method']} {c['seconds_per_image']:.4f}" for c in cheap))
    save_report(args.json, report, complete=True)
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
