"""The bench scripts run as bench/gpu_suite.sh runs them (as scripts, torch alone), here on CPU at toy sizes.

The GPU suite gets one try on a lent machine; a script that crashes there costs the session its figures.
These runs check that each script finishes, writes its JSON, and that the numbers in it are coherent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def bench(script: str, out: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_purify_bench_compares_every_engine_with_the_reference(tmp_path: Path) -> None:
    report = bench("purify.py", tmp_path / "p.json", "--size", "64", "--iterations", "12", "--batch", "1", "2")
    rows = {(r["config"], r["batch"]): r for r in report["results"]}
    for batch in (1, 2):
        assert rows[("reference", batch)]["speedup_vs_reference"] == pytest.approx(1.0)
        assert rows[("reference", batch)]["runtime"]["engine"] == "reference"
        # the fp32 fast engine stays on the reference's trajectory (tests/models/test_dip_engine.py)
        assert rows[("fast", batch)]["psnr_to_reference_db"] > 40
        assert rows[("fast-bf16", batch)]["runtime"]["precision"] == "bf16"
        assert 25 < rows[("fast-bf16", batch)]["psnr_to_reference_db"] < 80
    for r in report["results"]:
        assert r["ms_per_step"] > 0 and r["paper_s_per_image"] == pytest.approx(r["ms_per_image_step"] * 6)


def test_attacks_bench_counts_the_peer_iterations(tmp_path: Path) -> None:
    pytest.importorskip("torchattacks")
    report = bench("attacks.py", tmp_path / "a.json", "--batch", "2", "--cw-iters", "4", "--loop-images", "1")
    cw = [r for r in report["rows"] if r["attack"] == "cw_l2"]
    assert cw and all(1 <= r["torchattacks_iterations"] <= 4 for r in cw)
    assert all(0.0 <= r["ours_success"] <= 1.0 and r["ours_over_torchattacks_per_iteration"] > 0 for r in cw)


def test_detect_bench_reports_both_ratios(tmp_path: Path) -> None:
    report = bench("detect.py", tmp_path / "d.json", "--seconds", "0.5", "--concurrency", "4")
    assert report["service_images_per_s"] > 0 and report["raw_images_per_s"] > 0
    assert report["p50_over_forward"] == pytest.approx(report["lone_request_p50_ms"] / report["forward_batch1_ms"])


def test_restoration_bench_runs_fp32_and_bf16_presets(tmp_path: Path, demo_test_split: tuple[Path, Any]) -> None:
    folder, _ = demo_test_split
    report = bench(
        "restoration.py",
        tmp_path / "r.json",
        *("--data", str(folder), "--n", "2", "--paper-iterations", "10", "--default-max-iterations", "10"),
        *("--curve", "0", "--methods", "paper", "default-bf16", "jpeg"),
    )
    results = report["results"]
    assert results["default-bf16"]["runtime"]["precision"] == "bf16"
    assert results["paper"]["steps"] == 10
    assert set(results) == {"paper", "default-bf16", "jpeg"}
