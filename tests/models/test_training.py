"""Training loop, metrics and the ``train`` command, on tiny data and tiny models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepfake_guard import cli
from models import checkpoint, registry
from models.data import demo
from models.detector import Detector
from models.training import TrainConfig, auroc, binary_metrics, evaluate, selection_key, train_detector


def _pairwise_auroc(scores: list[float], positive: list[bool]) -> float:
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_hand_computed() -> None:
    # The classic 4-point example: 3 of the 4 positive/negative pairs are ordered right.
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]).bool()) == pytest.approx(0.75)
    # Ties count one half: pairs (0.5 vs 0.2)=1, (0.5 vs 0.5)=0.5, (0.9 vs 0.2)=1, (0.9 vs 0.5)=1 -> 3.5 / 4.
    assert auroc(torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([False, True, False, True])) == pytest.approx(0.875)
    assert auroc(torch.full((6,), 0.3), torch.tensor([1, 0, 1, 0, 1, 0]).bool()) == pytest.approx(0.5)
    assert auroc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([True, True, False])) == 1.0
    assert auroc(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([False, False, True])) == 0.0


def test_auroc_matches_pairwise_count_with_many_ties() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        scores = torch.randint(0, 5, (40,), generator=g).float()
        positive = torch.rand(40, generator=g) < 0.4
        assert auroc(scores, positive) == pytest.approx(_pairwise_auroc(scores.tolist(), positive.tolist()))


def test_auroc_undefined_for_one_class() -> None:
    assert auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None
    with pytest.raises(ValueError, match="length"):
        auroc(torch.tensor([0.1, 0.2]), torch.tensor([True]))


def test_binary_metrics_hand_computed() -> None:
    # labels: fake fake fake real real; predictions: fake fake real real fake
    logits = torch.tensor([[2.0, 0], [1, 0], [0, 1], [0, 3], [1, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    m = binary_metrics(logits, labels)
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx({"fake": 2 / 3, "real": 1 / 2})
    assert m["recall"] == pytest.approx({"fake": 2 / 3, "real": 1 / 2})
    assert m["support"] == {"fake": 3, "real": 2}
    # p(fake) = sigmoid(margin): fakes 0.88, 0.73, 0.27; reals 0.05, 0.73 -> pairs won 2.5 + 0 + ... = 4.5 / 6
    assert m["auroc"] == pytest.approx(4.5 / 6)
    json.dumps(m)  # undefined entries must stay JSON-serialisable
    empty_pred = binary_metrics(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    assert empty_pred["precision"]["fake"] is None


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean((2, 3)))


def _tiny_detector() -> Detector:
    torch.manual_seed(0)
    return Detector(_Tiny(), input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _toy_data(n: int = 32, seed: int = 0) -> TensorDataset:
    # fakes (label 0) are brighter: a learnable rule
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, 8, 8, generator=g) * 0.5 + (1 - labels).view(-1, 1, 1, 1) * 0.5
    return TensorDataset(images, labels)


def test_model_selection_keeps_the_best_val_epoch_weights() -> None:
    scripted = iter([0.6, 0.9, 0.7])
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_val(d: Detector) -> dict[str, Any]:
        snapshots.append({k: v.clone() for k, v in d.state_dict().items()})
        return {"accuracy": next(scripted), "auroc": 0.5, "loss": 1.0}

    result = train_detector(
        _tiny_detector(), _toy_data(), None, TrainConfig(epochs=3, batch_size=8), evaluate_fn=fake_val
    )
    assert result.best_epoch == 2 and result.best_val["accuracy"] == 0.9
    assert [h.epoch for h in result.history] == [1, 2, 3]
    state = result.detector.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[2][k]) for k in state)  # training did move on after it


def test_selection_ties_prefer_auroc_then_loss() -> None:
    assert selection_key({"accuracy": 0.9, "auroc": 0.95, "loss": 0.3}) > selection_key(
        {"accuracy": 0.9, "auroc": 0.9, "loss": 0.1}
    )
    assert selection_key({"accuracy": 0.9, "auroc": 0.9, "loss": 0.1}) > selection_key(
        {"accuracy": 0.9, "auroc": 0.9, "loss": 0.2}
    )
    assert selection_key({"accuracy": 0.91, "auroc": None, "loss": 9.0}) > selection_key(
        {"accuracy": 0.9, "auroc": 1.0, "loss": 0.0}
    )


def test_training_learns_a_simple_rule_and_is_seeded() -> None:
    cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-2)
    a = train_detector(_tiny_detector(), _toy_data(), _toy_data(seed=1), cfg)
    b = train_detector(_tiny_detector(), _toy_data(), _toy_data(seed=1), cfg)
    assert a.best_val["accuracy"] >= 0.9
    assert evaluate(a.detector, _toy_data(seed=2))["accuracy"] >= 0.9
    assert all(torch.equal(v, b.detector.state_dict()[k]) for k, v in a.detector.state_dict().items())


def test_train_config_and_missing_validation_raise() -> None:
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="rmsprop"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="val_set"):
        train_detector(_tiny_detector(), _toy_data(), None, TrainConfig(epochs=1))


def test_saved_detector_reloads_with_identical_outputs(tmp_path: Path) -> None:
    spec = registry.get("vgg16_slim")
    torch.manual_seed(0)
    det = spec.build(input_size=(32, 32))
    data = TensorDataset(torch.rand(8, 3, 32, 32), torch.arange(8) % 2)
    result = train_detector(det, data, data, TrainConfig(epochs=1, batch_size=4))
    meta = checkpoint.CheckpointMeta("vgg16_slim", (32, 32), spec.mean, spec.std, metrics={"test": evaluate(det, data)})
    checkpoint.save(result.detector, tmp_path / "ck", meta)
    loaded = checkpoint.load(tmp_path / "ck")
    x = torch.rand(3, 3, 40, 30)
    with torch.no_grad():
        assert torch.equal(loaded.detector(x), result.detector.eval()(x))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, demo.DemoConfig(size=32, n_train=8, n_val=4, n_test=4, generator_crops=8, generator_steps=5))
    return out


def test_train_command_writes_checkpoint_with_metrics_and_provenance(
    tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ck" / "tiny"
    argv = [
        "train",
        str(tiny_demo),
        "--arch",
        "vgg16_slim",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]
    monkeypatch.setattr("sys.argv", ["deepfake-guard", *argv])
    assert cli.main(argv) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["architecture"] == "vgg16_slim" and meta["input_size"] == [32, 32]
    test = meta["metrics"]["test"]
    assert test["n"] == 4 and 0 <= test["accuracy"] <= 1 and set(test["precision"]) == {"fake", "real"}
    assert "accuracy" in meta["metrics"]["val"]
    prov = meta["provenance"]
    assert prov["seed"] == 3 and prov["epochs"] == 1 and prov["chosen_epoch"] == 1
    assert prov["command"].startswith("deepfake-guard train") and "--seed 3" in prov["command"]
    manifest = json.loads((tiny_demo / "manifest.json").read_text())
    assert prov["dataset"]["content_sha256"] == manifest["content_sha256"]
    assert len(prov["dataset"]["manifest_sha256"]) == 64
    assert prov["torch"] == torch.__version__ and prov["date"]
    loaded = checkpoint.load(out)
    assert loaded.detector.input_size == (32, 32) and loaded.sha256 == meta["sha256"]


def test_dihedral_augment_returns_a_symmetry_of_each_image() -> None:
    from models.training import _augment

    x = torch.rand(16, 3, 5, 5)
    out = _augment(x, "dihedral", torch.Generator().manual_seed(0))
    seen = set()
    for a, b in zip(x, out, strict=True):
        variants = [a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)]
        variants += [v.transpose(-1, -2) for v in variants]
        matches = [k for k, v in enumerate(variants) if torch.equal(v, b)]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 2  # it does transform, not only mirror
    assert torch.equal(_augment(x, "none", torch.Generator()), x)


def test_train_command_lipschitz_sweep_writes_one_smooth_checkpoint_per_lambda(
    tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ck" / "lip"
    argv = ["train", str(tiny_demo), "--arch", "resnet18", "--smooth-relu", "--lipschitz-lambda", "0", "50",
            "--out", str(out), "--epochs", "1", "--batch-size", "4", "--image-size", "32"]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["deepfake-guard", *argv])
    assert cli.main(argv) == 0
    for lam in (0, 50):
        meta = json.loads((tmp_path / "ck" / f"lip-lambda{lam}.json").read_text())
        assert meta["architecture"] == "resnet18_hhrelu"
        training = meta["provenance"]["training"]
        assert training["lipschitz_lambda"] == lam and training["smooth_relu"] is True
        penalty = meta["provenance"]["history"][0]["train_penalty"]
        assert (penalty > 0) if lam else (penalty == 0)
        assert checkpoint.load(tmp_path / "ck" / f"lip-lambda{lam}").meta.architecture == "resnet18_hhrelu"
