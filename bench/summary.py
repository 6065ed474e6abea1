"""Issue 6's targets against what a bench/gpu_suite.sh run measured: one table, met or not, from its JSON files.

    python bench/summary.py runs/gpu-suite   # reads purify, purify-latency, attacks-224, detect, restoration.json

Each row names its source file and the figure it judges. A missing file or field reads "not measured"; a file
that a time limit cut short (``"complete": false``) is judged on the rows it holds and its source says "partial".
DIP speed only counts configurations whose output stays within ``--min-db`` of the eager reference's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    report["source"] = path.name if report.get("complete", True) else f"{path.name} (partial)"
    return report


def row(target: str, figure: str, met: bool | None, source: str) -> Row:
    return {"target": target, "figure": figure, "met": met, "source": source}


def dip_rows(purify: dict[str, Any] | None, latency: dict[str, Any] | None, min_db: float) -> list[Row]:
    rows = latency_rows(latency or purify)
    if purify is None or not purify["results"]:
        return [row("DIP 512 px: >= 1 image/s", "not measured", None, "purify.json"), *rows]
    ok = [r for r in purify["results"] if r["psnr_to_reference_db"] >= min_db]
    speed = []
    for preset, key in (("paper", "paper_images_per_s"), ("early", "early_images_per_s")):
        best = max(ok, key=lambda r: r[key], default=None)
        figure = (
            "none within the quality bound"
            if best is None
            else f"{best[key]:.2f} img/s ({best['config']}, batch {best['batch']})"
        )
        speed.append(
            row(
                f"DIP {purify['config']['size']} px, {preset} preset: >= 1 image/s",
                figure,
                None if best is None else best[key] >= 1.0,
                purify["source"],
            )
        )
    return speed + rows


def latency_rows(report: dict[str, Any] | None) -> list[Row]:
    if report is None or not report.get("latency"):
        return [row("DIP one image: <= 10 s", "not measured", None, "purify-latency.json")]
    return [
        row(
            f"DIP one {report['config']['size']} px image, {lat['preset']} preset: <= 10 s",
            f"{lat['seconds']:.1f} s ({lat['steps']} steps, {lat['config']})",
            lat["seconds"] <= 10.0,
            report["source"],
        )
        for lat in report["latency"]
    ]


def restoration_rows(restoration: dict[str, Any] | None) -> list[Row]:
    if restoration is None or "paper" not in restoration.get("results", {}):
        return [row("DIP restoration no worse than paper@6000", "not measured", None, "restoration.json")]
    results = restoration["results"]
    bar = results["paper"]
    rows = []
    for method, r in results.items():
        if method == "paper" or "steps" not in r:
            continue
        met = r["restored"] >= bar["restored"] and r["reals_kept"] >= bar["reals_kept"]
        rows.append(
            row(
                f"DIP {method}: restoration no worse than paper",
                f"restored {r['restored']:.2f} vs {bar['restored']:.2f}, reals kept {r['reals_kept']:.2f} "
                f"vs {bar['reals_kept']:.2f}",
                met,
                restoration["source"],
            )
        )
    return rows


def attack_rows(attacks: dict[str, Any] | None) -> list[Row]:
    if attacks is None:
        return [row("CW-L2 at 224 px: >= 20x loop, faster than torchattacks", "not measured", None, "attacks-224.json")]
    rows = []
    for r in attacks["rows"]:
        if r["attack"] != attacks.get("cw_attack"):
            continue
        rows.append(
            row(
                f"CW-L2 {r['model']}: >= 20x the batch-1 loop",
                f"{r['batched_over_loop']:.1f}x",
                r["batched_over_loop"] >= 20,
                attacks["source"],
            )
        )
        per_it = r.get("ours_over_torchattacks_per_iteration")
        if per_it is None:
            rows.append(
                row(
                    f"CW-L2 {r['model']}: faster than torchattacks",
                    "torchattacks not installed",
                    None,
                    attacks["source"],
                )
            )
            continue
        better = r["ours_success"] >= r["torchattacks_success"]
        rows.append(
            row(
                f"CW-L2 {r['model']}: faster than torchattacks per iteration, success no worse",
                f"{per_it:.2f}x, success {r['ours_success']:.2f} vs {r['torchattacks_success']:.2f} "
                f"(it ran {r['torchattacks_iterations']} of {r['iterations']})",
                per_it > 1.0 and better,
                attacks["source"],
            )
        )
    return rows


def detect_rows(detect: dict[str, Any] | None) -> list[Row]:
    if detect is None:
        return [row("/detect service >= 70% of raw bf16 batch 64", "not measured", None, "detect.json")]
    return [
        row(
            "/detect service >= 70% of raw batch-64 throughput",
            f"{detect['service_over_raw']:.2f} ({detect['service_images_per_s']:.0f} vs "
            f"{detect['raw_images_per_s']:.0f} img/s, {detect['precision']}, "
            f"mean batch {detect['service_mean_batch']:.1f})",
            detect["service_over_raw"] >= 0.7,
            detect["source"],
        ),
        row(
            "/detect lone request p50 <= 1.5 x forward",
            f"{detect['p50_over_forward']:.2f}",
            detect["p50_over_forward"] <= 1.5,
            detect["source"],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the suite's output folder")
    parser.add_argument("--min-db", type=float, default=35.0, help="quality bound for DIP speed (dB to reference)")
    args = parser.parse_args(argv)
    rows = [
        *dip_rows(load(args.folder, "purify"), load(args.folder, "purify-latency"), args.min_db),
        *restoration_rows(load(args.folder, "restoration")),
        *attack_rows(load(args.folder, "attacks-224")),
        *detect_rows(load(args.folder, "detect")),
    ]
    width = max(len(r["target"]) for r in rows)
    for r in rows:
        verdict = {True: "met", False: "NOT met", None: "-"}[r["met"]]
        print(f"{r['target']:<{width}}  {verdict:<8} {r['figure']}  [{r['source']}]")
    (args.folder / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
