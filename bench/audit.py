"""What one worker's audit costs: ``--n`` demo test images (half fake, half real) audited with a profile in one
process, shard by shard as models/audit/runner.py plans them (what one worker does with every shard of an audit),
with the wall time spent in each threat, images per second, and the record's headline figures. JSON out, a row per
threat as it ends, then the summary (docs/PERFORMANCE.md, "The audit"). Needs torch only (never imports app/).

    OMP_NUM_THREADS=1 python bench/audit.py --n 200 --threads 1 --json docs/results/audit-cpu-n200.json
    python bench/audit.py --n 4 --eps 8/255 --json runs/audit-tiny.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import checkpoint
from models.audit.profiles import PROFILES, threats_for
from models.audit.runner import SHARD_SIZE, AuditData, assemble, plan, run_shard
from models.audit.threats import AuditTarget
from models.checkpoint import DEMO_CHECKPOINTS
from models.detector import FAKE_INDEX
from models.devices import resolve_device


def balanced(data: AuditData, n: int) -> AuditData:
    """The first ``n // 2`` fakes and the first ``n - n // 2`` reals (in the audit's own order)."""
    fakes = [item for item in data.items if item[1] == FAKE_INDEX][: n // 2]
    reals = [item for item in data.items if item[1] != FAKE_INDEX][: n - n // 2]
    if len(fakes) + len(reals) < n:
        raise SystemExit(f"error: {data.root} holds {len(fakes)} fakes and {len(reals)} reals, fewer than --n {n}")
    return AuditData(data.root, tuple(fakes + reals))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINTS / "demo-resnet18")
    ap.add_argument("--data", type=Path, default=Path("data/demo/test"), help="folder with fake/ and real/")
    ap.add_argument("--n", type=int, default=200, help="images, half fake and half real")
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--eps", nargs="+", default=None, help="the white-box curve's budgets (the profile's if omitted)")
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (the default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"error: --n must be at least 1, got {args.n}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded = checkpoint.load(args.checkpoint, map_location=device)
    threshold, source = loaded.meta.operating_point()
    target = AuditTarget(loaded.name, loaded.detector.eval(), threshold)
    data = balanced(AuditData.from_folder(args.data), args.n)
    eps = [float(Fraction(e)) for e in args.eps] if args.eps else None
    threats = threats_for(args.profile, eps=eps)
    parts = plan(len(data.items), threats, shard_size=args.shard_size)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint),
        "profile": args.profile,
        "n": len(data.items),
        "n_fake": sum(1 for _, label in data.items if label == FAKE_INDEX),
        "shards": len(parts),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [],
    }
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for threat in sorted(threats, key=lambda t: t.spec.attack):  # the plan's order: the cheap threats first
        mine = [p for p in parts if p.threat == threat]
        t0 = time.perf_counter()
        for part in mine:
            results[part.key] = run_shard(target, data, part, seed=args.seed)
        seconds = time.perf_counter() - t0
        row = {"threat": threat.id, "family": threat.spec.family, "shards": len(mine), "seconds": seconds,
               "images_per_s": len(data.items) / seconds if seconds > 0 else None}  # fmt: skip
        print(f"{threat.id:<48}{seconds:9.2f} s  {len(data.items) / max(seconds, 1e-9):9.2f} img/s", flush=True)
        report["rows"].append(row)
        save_report(args.json, report, complete=False)
    wall = time.perf_counter() - started
    for row in report["rows"]:
        row["share"] = row["seconds"] / wall
    meta = {"detector": {"name": loaded.name}, "threshold_source": source, "profile": {"name": args.profile},
            "dataset": args.data.name}  # fmt: skip
    record = assemble(target, data, threats, results, meta=meta, seed=args.seed, shard_size=args.shard_size)
    clean = next(r for r in record["threats"] if r["name"] == "clean")["metrics"]
    report["summary"] = {
        "wall_s": wall,
        "images_per_s": len(data.items) / wall,
        "image_threats_per_s": len(data.items) * len(threats) / wall,
        "threshold": record["threshold"],
        "clean_acc": record["clean_acc"],
        "autoattack_acc": record["autoattack_acc"],
        "eps": record["eps"],
        "clean_auroc": clean["auroc"],
        "evasion": {r["id"]: r["metrics"]["evasion"]["rate"] for r in record["threats"] if "evasion" in r["metrics"]},
        "unreliable": record["unreliable"],
        "sentence": record["summary"],
    }
    print(f"wall {wall:.1f} s, {len(data.items) / wall:.2f} img/s; {record['summary']}")
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
