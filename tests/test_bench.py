"""The bench scripts run as bench/gpu_suite.sh runs them (as scripts, torch alone), here on CPU at toy sizes.

The GPU suite gets one try on a lent machine; a script that crashes there costs the session its figures.
These runs check that each script finishes, writes its JSON, and that the numbers in it are coherent, with
the service's packages made unimportable: the lent machines' image has torch, torchvision, numpy, pillow,
safetensors, tqdm, scikit-image and matplotlib, but none of the web/queue stack (/work/.library/device/KINDS.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NOT_ON_GPU_MACHINE = ("fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn", "redis", "rq", "multipart")
BLOCKER = f"""
import importlib.abc, sys

class _NotOnTheGpuMachine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {set(NOT_ON_GPU_MACHINE)!r}:
            raise ImportError(f"{{name}} is not installed on the lent GPU machines")
        return None

sys.meta_path.insert(0, _NotOnTheGpuMachine())
"""


@pytest.fixture(scope="module")
def gpu_machine_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("gpu-site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    return site


def test_the_blocker_blocks(gpu_machine_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(gpu_machine_site)}
    done = subprocess.run([sys.executable, "-c", "import fastapi"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "not installed on the lent GPU machines" in done.stderr


def bench(script: str, out: Path, *args: str, site: Path, path: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``bench/<script>`` with the GPU machines' packages only (plus the folders in ``path``)."""
    pythonpath = os.pathsep.join([str(site), *path])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": pythonpath}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["complete"] is True  # rewritten after every row; True only once the script finished
    return report


def test_purify_bench_compares_every_engine_with_the_reference(tmp_path: Path, gpu_machine_site: Path) -> None:
    report = bench(
        "purify.py",
        tmp_path / "p.json",
        *("--size", "64", "--iterations", "12", "--batch", "1", "2"),
        site=gpu_machine_site,
    )
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


def test_purify_bench_latency_only_runs_one_image_per_preset(tmp_path: Path, gpu_machine_site: Path) -> None:
    report = bench(
        "purify.py",
        tmp_path / "l.json",
        *("--size", "32", "--latency", "fast", "--latency-only", "--latency-presets", "early"),
        site=gpu_machine_site,
    )
    assert report["results"] == [] and report["cheap"] == []  # no batch sweep
    (one,) = report["latency"]
    assert one["preset"] == "early" and one["steps"] == 1000 and one["stopped_by"] == "fixed"
    assert one["seconds"] > 0 and one["runtime"]["engine"] == "fast"


def test_attacks_bench_counts_the_peer_iterations(tmp_path: Path, gpu_machine_site: Path) -> None:
    pytest.importorskip("torchattacks")
    report = bench(
        "attacks.py",
        tmp_path / "a.json",
        *("--batch", "2", "--cw-iters", "4", "--loop-images", "1"),
        site=gpu_machine_site,
    )
    cw = [r for r in report["rows"] if r["attack"] == "cw_l2"]
    assert cw and all(1 <= r["torchattacks_iterations"] <= 4 for r in cw)
    assert all(0.0 <= r["ours_success"] <= 1.0 and r["ours_over_torchattacks_per_iteration"] > 0 for r in cw)
    # The peer also ran with its weights frozen (its speed-up then comes from the loop alone).
    assert all(1 <= r["torchattacks_frozen_iterations"] <= 4 for r in cw)
    assert all(r["ours_over_torchattacks_frozen_per_iteration"] > 0 for r in report["rows"] if r in cw)
    assert all(r["ours_over_torchattacks_frozen"] > 0 for r in report["rows"])


def test_detect_bench_reports_both_ratios(tmp_path: Path, gpu_machine_site: Path) -> None:
    report = bench("detect.py", tmp_path / "d.json", "--seconds", "0.5", "--concurrency", "4", site=gpu_machine_site)
    assert report["service_images_per_s"] > 0 and report["raw_images_per_s"] > 0
    assert report["p50_over_forward"] == pytest.approx(report["lone_request_p50_ms"] / report["forward_batch1_ms"])


def test_restoration_bench_runs_fp32_and_bf16_presets(
    tmp_path: Path, demo_test_split: tuple[Path, Any], gpu_machine_site: Path
) -> None:
    folder, _ = demo_test_split
    report = bench(
        "restoration.py",
        tmp_path / "r.json",
        *("--data", str(folder), "--n", "2", "--paper-iterations", "10", "--default-max-iterations", "10"),
        *("--curve", "0", "--methods", "paper", "default-bf16", "jpeg"),
        site=gpu_machine_site,
    )
    results = report["results"]
    assert results["default-bf16"]["runtime"]["precision"] == "bf16"
    assert results["paper"]["steps"] == 10
    assert set(results) == {"paper", "default-bf16", "jpeg"}


def test_gpu_suite_runs_every_step_and_judges_them(
    tmp_path: Path, demo_test_split: tuple[Path, Any], gpu_machine_site: Path
) -> None:
    """The suite script itself (SUITE_SMOKE: CPU, toy sizes): every step runs, writes a complete JSON, and the
    summary judges each target from them. A typo in the script would otherwise surface on the GPU try."""
    folder, _ = demo_test_split
    out = tmp_path / "suite"
    env = {
        **os.environ,
        "SUITE_SMOKE": "1",
        "SUITE_DATA": str(folder),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(gpu_machine_site),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for step in ("purify-latency", "purify", "attacks", "attacks-224", "detect", "restoration"):
        assert json.loads((out / f"{step}.json").read_text())["complete"] is True, step
        assert (out / f"{step}.log").stat().st_size > 0
    rows = json.loads((out / "summary.json").read_text())
    sources = {r["source"] for r in rows}
    assert {"purify.json", "purify-latency.json", "restoration.json", "attacks-224.json", "detect.json"} <= sources
    assert all(r["figure"] != "not measured" for r in rows)
    assert (out / "summary.txt").read_text().count("\n") == len(rows)


def test_summary_judges_each_target_from_the_suite_files(tmp_path: Path) -> None:
    purify = {
        "config": {"size": 512},
        "results": [
            # fast but far from the reference's output: must not count
            {
                "config": "broken",
                "batch": 32,
                "psnr_to_reference_db": 12.0,
                "paper_images_per_s": 9.0,
                "early_images_per_s": 50.0,
            },
            {
                "config": "fast",
                "batch": 32,
                "psnr_to_reference_db": 48.0,
                "paper_images_per_s": 0.4,
                "early_images_per_s": 2.4,
            },
        ],
        "latency": [],
    }
    # cut short by its time limit after one preset: judged on what it holds, and says so
    latency = {
        "config": {"size": 512},
        "latency": [{"config": "fast", "preset": "early", "steps": 1000, "seconds": 3.0}],
        "complete": False,
    }
    restoration = {
        "results": {
            "paper": {"restored": 0.5, "reals_kept": 0.9, "steps": 6000},
            "early": {"restored": 0.6, "reals_kept": 0.85, "steps": 1000},
        }
    }
    detect = {
        "service_over_raw": 0.8,
        "service_images_per_s": 800,
        "raw_images_per_s": 1000,
        "precision": "bf16",
        "service_mean_batch": 50.0,
        "p50_over_forward": 1.1,
    }
    for name, data in (
        ("purify", purify),
        ("purify-latency", latency),
        ("restoration", restoration),
        ("detect", detect),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "summary.py"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows = {r["target"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert rows["DIP 512 px, paper preset: >= 1 image/s"]["met"] is False  # the 9 img/s config is excluded
    assert rows["DIP 512 px, early preset: >= 1 image/s"]["met"] is True
    one = rows["DIP one 512 px image, early preset: <= 10 s"]
    assert one["met"] is True and one["source"] == "purify-latency.json (partial)"
    assert rows["DIP 512 px, early preset: >= 1 image/s"]["source"] == "purify.json"
    assert rows["DIP early: restoration no worse than paper"]["met"] is False  # fewer reals kept
    assert rows["/detect service >= 70% of raw batch-64 throughput"]["met"] is True
    assert any(r["met"] is None and r["figure"] == "not measured" for r in rows.values())  # no attacks file


def test_faces_bench_times_detection_beside_the_forward_pass(tmp_path: Path, gpu_machine_site: Path) -> None:
    report = bench("faces.py", tmp_path / "f.json", "--photo", "512", "--size", "32", "--repeats", "2",
                   site=gpu_machine_site)  # fmt: skip
    rows = report["rows_ms"]
    assert {"dlib_upsample0", "dlib_upsample1", "forward_at_input", "whole_photo", "crop_faces"} <= set(rows)
    # the astronaut's face, found in the scaled photo (512 px, as tests/models/test_faces.py has it)
    assert len(report["faces"]) == 1, report["scores"]
    assert report["crop_faces_added_ms"] == pytest.approx(rows["crop_faces"] - rows["whole_photo"])


def test_faces_http_bench_times_crop_faces_on_detect_beside_the_forward_pass(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "fh.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faces_http.py"), "--photo", "512", "--size", "32", "--repeats", "2",
         "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = report["rows_ms"]
    assert {"forward_at_input", "dlib_upsample1", "http_whole", "http_faces"} <= set(rows)
    assert len(report["faces"]) == 1 and report["complete"] is True
    assert report["http_crop_faces_added_ms"] == pytest.approx(rows["http_faces"] - rows["http_whole"])


def test_adaptive_bench_sets_adaptive_beside_non_adaptive(
    tmp_path: Path, gpu_machine_site: Path, demo_test_split: tuple[Path, object]
) -> None:
    report = bench(
        "adaptive.py",
        tmp_path / "adaptive.json",
        *("--data", str(demo_test_split[0]), "--n", "2", "--eps", "8/255", "--steps", "2"),
        *("--purifiers", "median", "dip", "--dip-iterations", "12", "--bpda-iterations", "3", "--eot", "2"),
        site=gpu_machine_site,
    )
    rows = {r["purifier"]: r for r in report["rows"]}
    assert set(rows) == {"median", "dip"} and report["n"] == 2
    assert rows["median"]["defense"]["bpda"] == "exact" and rows["dip"]["defense"]["randomized"] is True
    # DIP is judged over two resubmissions, 3 of its steps inside the attack with EOT 2
    dip = rows["dip"]["defense"]
    assert dip["resubmissions"] == 2 and dip["eot_samples"] == 2 and dip["attack_params"]["max_iterations"] == 3
    for row in rows.values():
        for accs in row["thresholds"].values():
            for verdict in ("clean", "non_adaptive", "adaptive"):
                assert 0.0 <= accs[verdict]["worst"] <= accs[verdict]["mean"] <= 1.0
    costs = report["step_costs"]
    assert costs["purification_step_s"] > 0
    # EOT 4 runs four purifications per step where EOT 1 runs one
    assert costs["adaptive_step_eot4_s"] > costs["adaptive_step_eot1_s"]


def test_bpda_gradients_bench_compares_each_purifiers_gradients(
    tmp_path: Path, gpu_machine_site: Path, demo_test_split: tuple[Path, object]
) -> None:
    report = bench(
        "bpda_gradients.py",
        tmp_path / "bpda.json",
        *("--data", str(demo_test_split[0]), "--n", "2", "--eps", "2/255", "--pgd-steps", "2", "--apgd-steps", "2"),
        *("--checkpoints", str(ROOT / "models" / "demo_checkpoints" / "demo-resnet18")),
        site=gpu_machine_site,
    )
    rows = {(r["purifier"], r["attack"]): r for r in report["rows"]}
    assert set(rows) == {(p, a) for p in ("jpeg", "median", "bitdepth") for a in ("pgd", "apgd_ce")}
    assert set(rows["jpeg", "pgd"]["adaptive_fake_acc"]) == {"identity", "approx"}
    assert set(rows["median", "pgd"]["adaptive_fake_acc"]) == {"identity", "exact"}
    assert rows["jpeg", "pgd"]["declared_bpda"] == "approx"
    assert (
        report["fidelity"]["jpeg"]["approx_vs_real_psnr_median"]
        > report["fidelity"]["jpeg"]["input_vs_real_psnr_median"]
    )


def test_fab_rounding_bench_counts_float_and_delivered_successes(
    tmp_path: Path, gpu_machine_site: Path, demo_test_split: tuple[Path, object]
) -> None:
    report = bench(
        "fab_rounding.py",
        tmp_path / "fab.json",
        *("--data", str(demo_test_split[0]), "--n", "2", "--steps", "3"),
        *("--checkpoints", str(ROOT / "models" / "demo_checkpoints" / "demo-vgg16")),
        site=gpu_machine_site,
    )
    (row,) = report["rows"]
    assert row["n"] == 2 and row["eps"] == "8/255"
    for key in ("minimal", "scaled_out"):
        assert row[key]["png_fooled"] <= row[key]["float_fooled"] <= 2
    assert row["scaled_out"]["png_fooled"] >= row["minimal"]["png_fooled"]


def test_cw_peers_bench_judges_ours_and_each_importable_peer_alike(
    tmp_path: Path, gpu_machine_site: Path, demo_test_split: tuple[Path, object]
) -> None:
    # A peer importable here (e.g. PYTHONPATH=/work/peers) is importable in the script's run too.
    specs = {lib: importlib.util.find_spec(module) for lib, module in (("foolbox", "foolbox"), ("art", "art"))}
    folders = sorted({str(Path(s.origin).parents[1]) for s in specs.values() if s is not None and s.origin})
    report = bench(
        "cw_peers.py",
        tmp_path / "cw-peers.json",
        *("--data", str(demo_test_split[0]), "--n", "2", "--search-steps", "1", "--iterations", "5"),
        site=gpu_machine_site,
        path=folders,
    )
    rows = report["rows"]
    libraries = {r["library"] for r in rows}
    skipped = {s["library"] for s in report["skipped"]}
    # every peer either ran or is listed as skipped, never both; ours always ran, on both detectors
    assert "ours" in libraries and libraries | skipped == {"ours", "foolbox", "art"} and not libraries & skipped
    ours = {(r["detector"], r["configuration"]) for r in rows if r["library"] == "ours"}
    assert ours == {(d, c) for d in ("demo-resnet18", "demo-vgg16") for c in (
        "ours lr 0.05", "ours lr 0.01", "ours lr 0.05, rounding finish", "ours lr 0.01, rounding finish"
    )}  # fmt: skip
    assert report["base"]["search_steps"] == 1 and report["base"]["max_iterations"] == 5
    for r in rows:
        assert r["n"] == 2 and r["params"]["kappa"] == report["base"]["kappa"]
        assert 0.0 <= r["float_success_rate"] <= 1.0 and 0.0 <= r["png_success_rate"] <= 1.0
        assert r["png_success_rate"] == pytest.approx(r["png_success"] / r["n"])
        assert 1 <= r["iterations_per_image"] <= 5 and r["grad_calls_per_image"] >= r["iterations_per_image"]
        assert r["seconds_per_image"] > 0
        # failures count at infinity in the median over all: never below the successes' median
        if r["png_success"] == 0:
            assert r["median_l2_png"] is None and r["median_l2_png_all"] is None
        elif r["median_l2_png_all"] is not None:
            assert r["median_l2_png_all"] >= r["median_l2_png"] > 0
        if r["params"].get("round_finish"):
            # the finish returns 8-bit images that keep a kappa margin: the PNG keeps every float success
            assert r["png_success"] >= r["float_success"]
    # The peers are not project dependencies (docs/ATTACKS.md): checked where they are installed.
    if "art" in libraries:
        art = [r for r in rows if r["library"] == "art"]
        # ART has no early abort and takes two class gradients per iteration
        assert len(art) == 4 and all(r["iterations_per_image"] == 5 and r["grad_calls_per_image"] == 10 for r in art)
    if "foolbox" in libraries:
        foolbox = [r for r in rows if r["library"] == "foolbox"]
        assert len(foolbox) == 4 and all(r["grad_calls_per_image"] == r["iterations_per_image"] for r in foolbox)


def test_audit_bench_times_every_threat_of_the_plan(
    tmp_path: Path, gpu_machine_site: Path, demo_test_split: tuple[Path, object]
) -> None:
    report = bench(
        "audit.py",
        tmp_path / "audit.json",
        *("--data", str(demo_test_split[0]), "--n", "4", "--eps", "8/255", "--threads", "1"),
        site=gpu_machine_site,
    )
    assert report["n"] == 4 and report["n_fake"] == 2 and report["profile"] == "quick"
    rows = report["rows"]
    threats = [r["threat"] for r in rows]
    # one row per threat of the quick profile, each timed once: the clean pass, laundering, one white-box eps
    assert len(threats) == len(set(threats)) and threats[0] == "clean"
    assert "linf_suite(budget=quick, eps=8/255)" in threats and any(t.startswith("eot_pgd") for t in threats)
    assert sum(r["shards"] for r in rows) == report["shards"] == len(rows)  # 4 images: one shard per threat
    summary = report["summary"]
    assert all(r["seconds"] > 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=0.05)  # the threats are (nearly) all the wall
    assert summary["images_per_s"] == pytest.approx(4 / summary["wall_s"])
    assert summary["eps"] == "8/255" and 0.0 <= summary["clean_acc"] <= 100.0
    assert 0.0 <= summary["autoattack_acc"] <= 100.0
    assert set(summary["evasion"]) == set(threats) and "of clean fakes pass as real" in summary["sentence"]
