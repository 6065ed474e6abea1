"""The evaluation harness (``deepfake-guard evaluate``): its pieces on tiny inputs, quick mode end to end on a tiny
ImageFolder with random detectors, and the properties the demo detectors must show (slow, CI)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from deepfake_guard import cli
from models.checkpoint import DEMO_CHECKPOINTS
from models.evaluation import QUICK, EvalConfig
from models.evaluation.attacks import judge
from models.evaluation.clean import subsample, threshold_metrics
from models.evaluation.dip import is_fooled, raw_from_ema, raw_step
from models.images import save_png
from models.purify import PRESETS, dip_purify
from models.training import binary_metrics
from tests.conftest import make_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = DEMO_CHECKPOINTS


def test_threshold_metrics_match_argmax_at_one_half_and_move_with_the_threshold() -> None:
    p = torch.tensor([0.9, 0.6, 0.3, 0.2, 0.1, 0.4])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    logits = torch.stack([torch.log(p), torch.log(1 - p)], dim=1)
    assert threshold_metrics(p, labels, 0.5) == binary_metrics(logits, labels)
    low = threshold_metrics(p, labels, 0.25)  # fake when p >= 0.25: 0.9 0.6 0.3 | 0.4 -> one real wrong
    assert low["recall"]["fake"] == 1.0 and low["recall"]["real"] == pytest.approx(2 / 3)
    assert low["auroc"] == threshold_metrics(p, labels, 0.75)["auroc"]  # ranking, not threshold


def test_subsample_is_per_class_seeded_and_fakes_first() -> None:
    labels = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1])
    idx = subsample(labels, 2, seed=3)
    assert labels[idx].tolist() == [0, 0, 1, 1]
    assert torch.equal(idx, subsample(labels, 2, seed=3))
    assert torch.equal(subsample(labels, None, seed=0), torch.arange(8))


def test_judge_counts_success_only_on_fakes_caught_before() -> None:
    x = torch.zeros(4, 3, 2, 2)
    adv = x.clone()
    adv[1] += 0.1
    y = torch.tensor([0, 0, 0, 1])
    p_clean = torch.tensor([0.9, 0.8, 0.2, 0.1])  # fake 2 was missed before the attack
    p_after = torch.tensor([0.7, 0.3, 0.1, 0.6])  # fake 1 flipped; the real became fake
    r = judge(x, y, adv, p_clean, p_after)
    assert r["caught_before"] == 2 and r["fooled"] == 1 and r["success_rate"] == 0.5
    assert r["fake_accuracy"] == pytest.approx(1 / 3) and r["real_accuracy"] == 0.0
    assert r["median_linf"] == pytest.approx(0.1) and r["median_l2"] == pytest.approx(0.1 * 12**0.5)


def test_raw_dip_output_is_recovered_from_consecutive_ema_snapshots() -> None:
    """The EMA run and an ema = 0 run follow the same trajectory (same seed): the recovered raw output of the
    first must equal the second's output."""
    torch.set_num_threads(1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    every = PRESETS["paper"].backtrack_every
    r = raw_step(20, every)
    assert r % every != 0 and r <= 20
    ema = dip_purify(x, preset="paper", max_iterations=r, snapshots=(r - 1, r))
    raw = dip_purify(x, preset=replace(PRESETS["paper"], ema=0.0), max_iterations=r, snapshots=(r,))
    recovered = raw_from_ema(ema.snapshots[r], ema.snapshots[r - 1], PRESETS["paper"].ema)
    assert torch.allclose(recovered, raw.snapshots[r], atol=1e-4)
    assert not torch.allclose(ema.snapshots[r], raw.snapshots[r], atol=1e-3)  # the EMA really differs


def test_config_rejects_a_stop_outside_the_snapshots() -> None:
    with pytest.raises(ValueError, match="dip_stop_at 250"):
        replace(QUICK, dip_stop_at=250)
    with pytest.raises(ValueError, match="strong"):
        EvalConfig(mode="quick", n_per_class=2, cw_presets=("strong",))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px ImageFolder (fakes are low-contrast noise) and two random detectors of two families."""
    root = tmp_path_factory.mktemp("eval")
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        for cls in ("fake", "real"):
            for i in range(20 if split == "val" else 6):  # 20 reals: enough to fit a 5 % FPR threshold
                x = torch.rand(3, 32, 32, generator=g)
                save_png(x * 0.5 + 0.25 if cls == "fake" else x, root / "data" / split / cls / f"{i}.png")
    make_tiny_checkpoint(root / "ckpt", "tiny-resnet", arch="resnet18", seed=1)
    make_tiny_checkpoint(root / "ckpt", "tiny-vgg", arch="vgg16_slim", seed=0)
    return root


@pytest.mark.slow
def test_quick_mode_end_to_end_writes_report_json_and_images(tiny_setup: Path) -> None:
    torch.set_num_threads(1)
    out = tiny_setup / "out"
    argv = [
        "evaluate", "--quick", "--data", str(tiny_setup / "data"), "--out", str(out), "--threads", "1",
        "--checkpoints", str(tiny_setup / "ckpt" / "tiny-resnet"), str(tiny_setup / "ckpt" / "tiny-vgg"),
        "--cw-max-iterations", "5", "--dip-iterations", "30", "--dip-snapshots", "10", "30", "--dip-auto-cap", "20",
        "--lambdas", "0", "5", "--lipschitz-train-per-class", "4", "--lipschitz-val-per-class", "2",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for heading in ("## R1", "## R2", "## R3", "## R4", "## R5"):
        assert heading in report
    # R5's standard suite ran on every given detector, not on the Lipschitz sweep's fine-tunes
    assert set(results["r5"]["suite"]) == {"tiny-resnet", "tiny-vgg"}
    assert {d["name"] for d in results["detectors"]} == {
        "tiny-resnet", "tiny-vgg", "tiny-resnet-lipschitz-0", "tiny-resnet-lipschitz-5"
    }  # fmt: skip
    # Every target gets WB, and BB from the other family, under every delivery and attack.
    rows = results["attacks"]
    assert len(rows) == 2 * 3 * (4 + 4)  # attacks x deliveries x (WB per detector + BB per detector)
    bb = [r for r in rows if r["setting"] == "BB"]
    assert {(r["source"], r["target"]) for r in bb} >= {("tiny-vgg", "tiny-resnet"), ("tiny-resnet", "tiny-vgg")}
    assert all(r["source"] == "tiny-vgg" for r in bb if r["target"].startswith("tiny-resnet-lipschitz"))
    assert results["dip"]["n"] == sum(c["sampled"] for c in results["dip"]["counts"].values())
    assert "auto" in results["dip"]
    swept = json.loads((out / "lipschitz" / "tiny-resnet-lipschitz-5.json").read_text())
    assert swept["architecture"] == "resnet18_hhrelu"
    assert swept["provenance"]["training"]["lipschitz_lambda"] == 5.0
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {"attacks.png", "lipschitz.png", "dip.png", "roc.png"}
    assert set(results["calibration"]) == {d["name"] for d in results["detectors"]}
    assert "### Operating points" in report
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        assert f"]({p.name})" in report


@pytest.fixture(scope="module")
def demo_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.data import demo

    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, demo.DemoConfig(), splits=["test"])
    return out


@pytest.mark.slow
def test_quick_mode_on_the_demo_detectors_shows_the_attack_and_the_defence(demo_test_split: Path) -> None:
    """CI's property check on the committed demo detectors: white-box FGSM lowers fake accuracy below clean,
    and DIP (quick: 300 steps) gives some fooled fakes their "fake" verdict back (undefended: none, by
    definition)."""
    names = ("demo-resnet18", "demo-vgg16")
    if not all((CHECKPOINTS / f"{n}.safetensors").is_file() for n in names):
        pytest.skip("demo checkpoints not present")
    torch.set_num_threads(1)
    from models.evaluation import evaluate, write_outputs

    out = demo_test_split / "eval"
    config = replace(QUICK, lipschitz_lambdas=())
    results = evaluate([CHECKPOINTS / n for n in names], demo_test_split, out, config, device=torch.device("cpu"))
    write_outputs(results, out)
    for entry in results["summary"]:
        assert entry["fgsm WB"] < entry["clean"], entry
    dip = results["dip"]
    fooled = [c for c in dip["counts"] if is_fooled(c) and dip["counts"][c]["sampled"]]
    assert fooled, dip["counts"]
    # R5: every purifier attacked both ways; knowing the purifier never makes the attack weaker through JPEG and
    # bit depth (identity BPDA), and the standard suite never leaves more robust images than clean-correct ones.
    from models.purify import BITDEPTH, JPEG
    from models.purify import names as purifier_names

    r5 = results["r5"]
    assert r5["detector"] == names[0] and r5["fakes"] == config.r5_fakes
    rows = {r["purifier"]: r for r in r5["rows"]}
    assert set(rows) == set(purifier_names())
    for spec in (JPEG, BITDEPTH):
        acc = rows[spec.name]["thresholds"]["0.5"]
        assert acc["adaptive"]["worst"] <= acc["non_adaptive"]["worst"], rows[spec.name]
    assert set(r5["suite"]) == set(names)
    for v in r5["suite"].values():
        assert v["robust_accuracy"] <= v["clean_accuracy"] and v["forward_passes"] > 0
    at_stop = next(c for c in dip["fixed"]["curve"] if c["iteration"] == config.dip_stop_at)
    assert dip["no_defence"]["thresholds"]["0.5"]["restored"] == 0.0
    assert at_stop["ema"]["thresholds"]["0.5"]["restored"] > 0.0
