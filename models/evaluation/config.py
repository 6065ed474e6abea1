"""What an evaluation run does and at which sizes: the ``quick`` (CI, CPU) and ``full`` (paper-sized) presets.

Every size that changes a number in the report lives here, so ``results.json`` can record the exact
configuration next to the numbers (``EvalConfig.to_json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from models.attacks import CW_L2, CW_PRESETS, FGSM
from models.attacks.measure import SAVE_FORMATS

Mode = Literal["quick", "full"]
#: "float" judges the adversarial image as crafted (no file); the others as ``models.attacks.measure.deliver``.
DELIVERIES: tuple[str, ...] = ("float", *SAVE_FORMATS)


@dataclass(frozen=True)
class EvalConfig:
    mode: Mode
    #: Test images per class that are attacked (None: the whole test split). Clean metrics (R1) always use
    #: the whole test split.
    n_per_class: int | None
    fgsm_eps: float = 0.02
    #: CW-L2 presets to run (``models.attacks.CW_PRESETS``), each as attack ``cw_<preset>``.
    cw_presets: tuple[str, ...] = ("default",)
    #: Overrides applied to every CW preset (quick mode shortens the optimisation).
    cw_overrides: dict[str, Any] = field(default_factory=dict)
    deliveries: tuple[str, ...] = DELIVERIES
    #: The delivery of the headline tables and bar chart: the paper judged JPEG-75 files.
    headline_delivery: str = "jpeg75"
    batch_size: int = 64
    #: The false-positive rate the operating threshold is fitted for on DATA/val (docs/RESULTS.md).
    target_fpr: float = 0.05
    # --- R3: Lipschitz sweep (fine-tunes the first ResNet checkpoint once per lambda; 0 is the control).
    lipschitz_lambdas: tuple[float, ...] = ()
    lipschitz_epochs: int = 1
    #: Training images per class drawn from DATA/train (None: all); validation uses DATA/val (capped alike).
    lipschitz_train_per_class: int | None = None
    lipschitz_val_per_class: int | None = 100
    lipschitz_smooth_relu: bool = True
    lipschitz_lr: float = 3e-4
    lipschitz_batch_size: int = 32
    # --- R4: DIP on a stratified subsample, purified for one detector (default: the first checkpoint).
    dip: bool = True
    dip_detector: str | None = None
    dip_per_category: int = 10
    dip_delivery: str = "png"
    dip_cw: str = "cw_default"
    dip_iterations: int = 6000
    #: The paper's fixed stop and threshold (headline row).
    dip_stop_at: int = 6000
    dip_threshold: float = 0.25
    dip_snapshots: tuple[int, ...] = (500, 1000, 2000, 3000, 4000, 5000, 6000)
    dip_thresholds: tuple[float, ...] = (0.25, 0.5, 0.75)
    #: Also run the ``default`` preset's label-free stop (ES-WMV) on the same images, capped here.
    dip_auto: bool = True
    dip_auto_cap: int = 3000
    # --- R5: non-adaptive vs adaptive PGD through each purifier (models/evaluation/adaptive.py), on the first
    # detector's test fakes that it calls fake, and the standard suite on every detector.
    r5: bool = True
    #: Fakes attacked through each purifier (None: every fake of the attacked subsample the detector calls fake).
    r5_fakes: int | None = None
    r5_eps: tuple[float, ...] = (2 / 255, 8 / 255)
    r5_steps: int = 10
    #: Purifiers attacked (empty: every registered one).
    r5_purifiers: tuple[str, ...] = ()
    #: An iterative purifier's (DIP's) fixed stop as the defence runs it, and its steps inside the attack.
    r5_iterations: int = 6000
    r5_bpda_iterations: int = 500
    r5_eot: int = 2
    r5_resubmissions: int = 3
    #: The standard suite's L-inf eps and budget (models/evaluation/robustness.py BUDGETS).
    r5_suite_eps: float = 8 / 255
    r5_suite_budget: str = "standard"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("quick", "full"):
            raise ValueError(f"mode must be 'quick' or 'full', got {self.mode!r}")
        if self.n_per_class is not None and self.n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {self.n_per_class}")
        unknown = [p for p in self.cw_presets if p not in CW_PRESETS]
        if unknown:
            raise ValueError(f"unknown CW presets {unknown}; choose from {sorted(CW_PRESETS)}")
        bad = [d for d in (*self.deliveries, self.headline_delivery, self.dip_delivery) if d not in DELIVERIES]
        if bad:
            raise ValueError(f"unknown deliveries {bad}; choose from {list(DELIVERIES)}")
        if self.headline_delivery not in self.deliveries:
            raise ValueError(f"headline_delivery {self.headline_delivery!r} is not among {self.deliveries}")
        if self.dip_cw not in self.attack_names:
            raise ValueError(f"dip_cw {self.dip_cw!r} is not among the attacks run {self.attack_names}")
        if self.dip_per_category < 1 or self.dip_iterations < 2:
            raise ValueError(
                f"dip_per_category must be >= 1 and dip_iterations >= 2, got {self.dip_per_category}, "
                f"{self.dip_iterations}"
            )
        if any(s < 3 or s > self.dip_iterations for s in self.dip_snapshots):
            raise ValueError(f"dip_snapshots must lie in [3, {self.dip_iterations}], got {self.dip_snapshots}")
        if self.dip_stop_at not in self.dip_snapshots:
            raise ValueError(f"dip_stop_at {self.dip_stop_at} must be one of dip_snapshots {self.dip_snapshots}")
        if self.dip_threshold not in self.dip_thresholds or not all(0 < t < 1 for t in self.dip_thresholds):
            raise ValueError(
                f"dip_thresholds must lie in (0, 1) and include dip_threshold {self.dip_threshold}, "
                f"got {self.dip_thresholds}"
            )
        if any(lam < 0 for lam in self.lipschitz_lambdas):
            raise ValueError(f"lipschitz lambdas must be >= 0, got {self.lipschitz_lambdas}")
        from models import purify as purifiers

        stray = [name for name in self.r5_purifiers if name not in purifiers.names()]
        if stray:
            raise ValueError(f"unknown R5 purifiers {stray}; choose from {purifiers.names()}")
        if self.r5_suite_budget not in ("standard", "quick"):
            raise ValueError(f"r5_suite_budget must be 'standard' or 'quick', got {self.r5_suite_budget!r}")
        if self.r5_steps < 1 or self.r5_iterations < 2 or self.r5_bpda_iterations < 1 or self.r5_eot < 1:
            raise ValueError("r5_steps, r5_bpda_iterations and r5_eot must be >= 1 and r5_iterations >= 2")
        if self.r5_resubmissions < 1 or (self.r5_fakes is not None and self.r5_fakes < 1):
            raise ValueError("r5_resubmissions and r5_fakes must be >= 1")
        if not self.r5_eps or not all(0 < e <= 1 for e in (*self.r5_eps, self.r5_suite_eps)):
            raise ValueError(f"R5 eps must lie in (0, 1], got {self.r5_eps} and {self.r5_suite_eps}")
        if self.lipschitz_epochs < 1:
            raise ValueError(f"lipschitz_epochs must be >= 1, got {self.lipschitz_epochs}")

    @property
    def attack_names(self) -> tuple[str, ...]:
        return (FGSM.name, *(f"cw_{p}" for p in self.cw_presets))

    def attack(self, name: str) -> tuple[str, dict[str, Any]]:
        """``(method, params)`` for an attack name of ``attack_names``."""
        if name == FGSM.name:
            return FGSM.name, {"eps": self.fgsm_eps}
        if name.startswith("cw_") and name[3:] in self.cw_presets:
            return CW_L2.name, {**CW_PRESETS[name[3:]], **self.cw_overrides}
        raise ValueError(f"unknown attack {name!r}; choose one of {self.attack_names}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **changes: Any) -> EvalConfig:
        """A copy with the non-None ``changes`` applied (CLI overrides)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: CI on 2 CPU cores in a few minutes. The CW budget is cut (the default preset's 5 x 100 steps become
#: 3 x 40); DIP runs 800 steps on one image per category (about 10 s per 64 px image on one core): on the demo
#: ResNet-18 the fooled fakes' "fake" verdict comes back between 250 and 1,000 steps (docs/RESULTS.md), earlier
#: outputs are called real whatever their class. The label-free stop is not run: its rule cannot fire before
#: 800 steps (300 minimum + 500 patience).
QUICK = EvalConfig(
    mode="quick",
    n_per_class=8,
    cw_presets=("default",),
    cw_overrides={"max_iterations": 40, "search_steps": 3},
    lipschitz_lambdas=(0.0, 50.0),
    lipschitz_epochs=1,
    lipschitz_train_per_class=64,
    lipschitz_val_per_class=32,
    dip_per_category=1,
    dip_iterations=800,
    dip_stop_at=800,
    dip_snapshots=(100, 200, 400, 800),
    dip_auto=False,
    # R5 at 64 px with few steps: 4 fakes, PGD 5 steps at 8/255, DIP 100 steps (20 inside the attack), EOT 2.
    r5_fakes=4,
    r5_eps=(8 / 255,),
    r5_steps=5,
    r5_iterations=100,
    r5_bpda_iterations=20,
    r5_eot=2,
    r5_resubmissions=2,
    r5_suite_budget="quick",
)

#: The paper's sizes: whole test split, both CW presets, 10 images per DIP category, 6,000 DIP steps, the
#: label-free stop beside it, lambdas {5, 50, 500, 5000} plus the lambda = 0 control. Meant for a GPU.
FULL = EvalConfig(
    mode="full",
    n_per_class=None,
    cw_presets=("default", "paper"),
    lipschitz_lambdas=(0.0, 5.0, 50.0, 500.0, 5000.0),
    lipschitz_epochs=2,
    lipschitz_train_per_class=None,
    lipschitz_val_per_class=None,
)

PRESETS: dict[str, EvalConfig] = {"quick": QUICK, "full": FULL}
