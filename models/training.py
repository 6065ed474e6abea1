"""Detector training and evaluation: the loop behind ``deepfake-guard train`` and its metrics.

Metrics follow the paper's tables: accuracy, AUROC (fake is the positive class, scored by p(fake)) and
per-class precision/recall. AUROC is computed here in torch (rank statistic with tied ranks averaged),
so ``models`` needs no scikit-learn.

Model selection uses the validation split only (the paper selected on its test set; see docs/PAPER.md,
"What the authors left open"); the caller evaluates the test split once, on the chosen weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from models.detector import CLASS_NAMES, FAKE_INDEX, Detector
from models.lipschitz import lipschitz_penalty
from models.progress import Progress, ProgressFn, StopFn, check_stop

OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("none", "flip", "dihedral")
SCHEDULES = ("cosine", "constant")


def auroc(scores: Tensor, positive: Tensor) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` labels; None if a class is absent.

    Mann-Whitney form: the probability that a random positive scores above a random negative, ties
    counting one half (average ranks), which equals the trapezoidal area under the ROC curve.
    """
    scores = scores.detach().flatten().double().cpu()
    positive = positive.detach().flatten().bool().cpu()
    if scores.shape != positive.shape:
        raise ValueError(f"scores and labels differ in length: {scores.numel()} vs {positive.numel()}")
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last member
    avg_rank_per_group = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = torch.repeat_interleave(avg_rank_per_group, counts)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def binary_metrics(logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy, AUROC (fake positive), per-class precision/recall and counts from N x 2 logits.

    The prediction is the argmax (ties go to index 0, ``fake``), as a served detector decides.
    Undefined ratios (no predictions of a class, no examples of it) are None so the result is valid JSON.
    """
    if logits.dim() != 2 or logits.shape[1] != 2 or logits.shape[0] != labels.numel():
        raise ValueError(f"need N x 2 logits and N labels, got {tuple(logits.shape)} and {labels.numel()}")
    logits = logits.detach().float().cpu()
    labels = labels.detach().long().cpu()
    pred = logits.argmax(1)
    p_fake = torch.softmax(logits, 1)[:, FAKE_INDEX]
    n = int(labels.numel())
    out: dict[str, Any] = {
        "n": n,
        "accuracy": _ratio(int((pred == labels).sum()), n),
        "auroc": auroc(p_fake, labels == FAKE_INDEX),
        "precision": {},
        "recall": {},
        "support": {},
    }
    for k, name in enumerate(CLASS_NAMES):
        tp = int(((pred == k) & (labels == k)).sum())
        out["precision"][name] = _ratio(tp, int((pred == k).sum()))
        out["recall"][name] = _ratio(tp, int((labels == k).sum()))
        out["support"][name] = int((labels == k).sum())
    return out


@torch.no_grad()
def predict(
    detector: Detector,
    dataset: Dataset[tuple[Tensor, int]],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[Tensor, Tensor]:
    """``(logits N x 2, labels N)`` of ``detector`` (put in eval mode) over a dataset, on CPU.

    ``progress`` hears after each batch: ``iteration`` images done of ``max_iterations``.
    """
    detector.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    logits, labels = [], []
    total = len(dataset)  # type: ignore[arg-type]
    for x, y in loader:
        logits.append(detector(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
        if progress is not None:
            progress(Progress(sum(len(b) for b in labels), total, float("nan"), stage="predict"))
    return torch.cat(logits), torch.cat(labels)


def evaluate(
    detector: Detector,
    dataset: Dataset[tuple[Tensor, int]],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """``binary_metrics`` plus the mean cross-entropy ``loss`` of a detector on a dataset."""
    logits, labels = predict(
        detector, dataset, batch_size=batch_size, device=device, workers=workers, progress=progress
    )
    return {**binary_metrics(logits, labels), "loss": float(F.cross_entropy(logits, labels))}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    #: "flip": random horizontal mirror; "dihedral": also vertical mirror and 90-degree rotations, for data
    #: with no upright (the demo photo crops; not faces).
    augment: str = "flip"
    #: "cosine" anneals the learning rate to 0 over all steps; "constant" is the paper's plain SGD.
    schedule: str = "cosine"
    #: Weight of the paper's Lipschitz penalty mean((dZ_k/dx)^2) (models/lipschitz.py); 0 trains with CE alone.
    lipschitz_lambda: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not (self.lipschitz_lambda >= 0 and math.isfinite(self.lipschitz_lambda)):
            raise ValueError(f"lipschitz_lambda must be a number >= 0, got {self.lipschitz_lambda}")


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val: dict[str, Any]
    seconds: float
    #: Mean Lipschitz penalty over the epoch's batches (0 when lipschitz_lambda is 0); train_loss is the CE alone.
    train_penalty: float = 0.0


@dataclass
class TrainResult:
    detector: Detector  # holds the chosen epoch's weights, in eval mode
    best_epoch: int
    history: list[EpochStats] = field(default_factory=list)

    @property
    def best_val(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1].val


EvaluateFn = Callable[[Detector], dict[str, Any]]


def selection_key(val: dict[str, Any]) -> tuple[float, float, float]:
    """Higher is better: val accuracy, then val AUROC, then lower val loss (ties keep the earlier epoch)."""
    loss = val.get("loss")
    return (
        float(val.get("accuracy") or 0.0),
        float(val.get("auroc") or 0.0),
        -float(loss) if loss is not None and math.isfinite(loss) else -math.inf,
    )


def _optimizer(detector: Detector, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in detector.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _augment(x: Tensor, mode: str, gen: torch.Generator) -> Tensor:
    # The fakes' traces (a blended, upsampled region) do not depend on orientation, so mirrored or
    # rotated images keep their labels; per-sample draws come from the loader's seeded generator.
    if mode == "none":
        return x
    n = x.shape[0]
    mirror = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(mirror, x.flip(-1), x)
    if mode == "dihedral" and x.shape[-1] == x.shape[-2]:
        vflip = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(vflip, x.flip(-2), x)
        transpose = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(transpose, x.transpose(-1, -2), x)
    return x


def train_detector(
    detector: Detector,
    train_set: Dataset[tuple[Tensor, int]],
    val_set: Dataset[tuple[Tensor, int]] | None,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    workers: int = 0,
    evaluate_fn: EvaluateFn | None = None,
    progress: ProgressFn | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: StopFn | None = None,
) -> TrainResult:
    """Train with cross-entropy and keep the epoch that scores best on validation (``selection_key``).

    ``evaluate_fn(detector) -> metrics`` replaces the validation pass (tests inject one); by default it is
    ``evaluate(detector, val_set)``. One of ``val_set``/``evaluate_fn`` is required: there is no
    selection without held-out data, and the test split must never be it. The sets hold images fitted to the
    detector's input already (``models.facecrop.folder_for``): the detector scores them through ``prefitted()``.
    """
    if evaluate_fn is None:
        if val_set is None:
            raise ValueError("train_detector needs a val_set or an evaluate_fn for model selection")
        held_out = val_set

        def evaluate_fn(d: Detector) -> dict[str, Any]:
            return evaluate(
                d.prefitted(), held_out, batch_size=max(config.batch_size, 128), device=device, workers=workers
            )

    detector.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
    )
    opt = _optimizer(detector, config)
    fitted = detector.prefitted()  # same parameters: training it trains the detector
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if config.schedule == "cosine" else None
    history: list[EpochStats] = []
    best_state: dict[str, Tensor] | None = None
    best_key: tuple[float, float, float] | None = None
    best_epoch = 0
    step = 0
    for epoch in range(1, config.epochs + 1):
        detector.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        penalty_sum = torch.zeros((), device=device)
        seen = 0
        for x, y in loader:
            check_stop(should_stop, step)
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            x = _augment(x, config.augment, gen)
            regularised = config.lipschitz_lambda > 0
            if regularised:
                x = x.detach().requires_grad_(True)
            logits = fitted(x)
            ce = F.cross_entropy(logits, y)
            loss = ce
            if regularised:
                # Gandhi & Jain's Lipschitz regularisation: double backprop through the input gradient.
                penalty = lipschitz_penalty(x, logits)
                loss = ce + config.lipschitz_lambda * penalty
                penalty_sum += penalty.detach() * x.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            loss_sum += ce.detach() * x.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += x.shape[0]
            if progress is not None and (step % 5 == 0 or step % steps_per_epoch == 0):
                progress(Progress(step, total, float(loss_sum) / seen, stage=f"epoch {epoch}/{config.epochs}"))
        val = evaluate_fn(detector)
        stats = EpochStats(
            epoch=epoch,
            train_loss=float(loss_sum) / max(seen, 1),
            train_accuracy=float(correct) / max(seen, 1),
            val=val,
            seconds=time.perf_counter() - started,
            train_penalty=float(penalty_sum) / max(seen, 1),
        )
        history.append(stats)
        key = selection_key(val)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in detector.state_dict().items()}
        if on_epoch is not None:
            on_epoch(stats)
    assert best_state is not None  # epochs >= 1 is validated
    detector.load_state_dict(best_state)
    detector.eval()
    return TrainResult(detector=detector, best_epoch=best_epoch, history=history)
