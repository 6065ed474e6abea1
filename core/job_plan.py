"""One cost plan per job: what a request costs, whether it may run in the request, and which queue it waits in.

The route (app/routes/attack.py, app/routes/purify.py), the queue choice (app/jobs.py ``lane_for``) and the worker's
progress cap (workers/jobs.py) all read the plan that ``plan_attack`` or ``plan_purify`` returns, so they cannot
disagree (docs/OPERATIONS.md, "Queues"). The plan is computed once, from parameters already resolved by the
methods' declarations, and travels with the job (``JobPlan.to_json`` in the job's meta).

Costs are counted in two units, both at ``REFERENCE_PIXELS`` (the paper's 512 x 512; a larger image counts as
proportionally more, a smaller one as one):

* **detector steps**: a forward and a backward pass of the detector, what the synchronous budgets
  (DFG_PGD_SYNC_MAX_STEPS, DFG_CW_SYNC_MAX_STEPS) and DFG_FAST_LANE_MAX_STEPS bound: attack steps x EOT samples x
  face crops;
* **DIP steps**: optimisation steps of an iterative purifier, inside an adaptive attack (per attack step and EOT
  sample, then once per judging resubmission) or as the purification itself.

``expected_s`` prices them with DFG_ATTACK_STEP_S and DFG_DIP_STEP_S; DFG_FAST_LANE_MAX_S bounds it for the fast
queue, so a job that would hold the fast lane for minutes waits in the slow one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from core.jobs import AttackJob, PurifyJob, working_size
from core.settings import Settings
from models.attacks import registry as attacks
from models.attacks.adaptive import Defense, resolve_defense
from models.attacks.registry import AttackSpec
from models.purify import registry as purifiers
from models.purify.registry import PurifierSpec

#: The image size at which steps are counted (the synchronous budgets, the fast lane and the expected seconds).
REFERENCE_PIXELS = 512 * 512

Lane = Literal["fast", "slow"]
#: Which synchronous budget counts an attack's steps (``AttackSpec.sync_budget``); ``none``: never synchronous.
BudgetKind = Literal["gradient", "optimizer", "none"]


@dataclass(frozen=True)
class JobPlan:
    """What a job costs and where it runs.

    ``steps``: the steps its progress runs up to (attack steps per image; an iterative purifier's iterations; 0 for
    a one-shot purifier). ``detector_steps`` and ``dip_steps``: its whole cost at ``REFERENCE_PIXELS``.
    ``sync``: it may run inside the request (attacks within their synchronous budget, never through an iterative
    purifier). ``lane``: the queue it waits in when queued.
    """

    kind: Literal["attack", "purify"]
    method: str
    steps: int
    budget: BudgetKind
    detector_steps: float
    dip_steps: float
    expected_s: float
    sync: bool
    lane: Lane

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobPlan:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def queue(self, settings: Settings) -> str:
        """The RQ queue name of ``lane``."""
        return settings.fast_queue if self.lane == "fast" else settings.slow_queue


def pixel_scale(height: int, width: int) -> float:
    """How many reference images one image of ``height`` x ``width`` counts as (never less than one)."""
    return max(1.0, height * width / REFERENCE_PIXELS)


def _seconds(settings: Settings, detector_steps: float, dip_steps: float) -> float:
    return detector_steps * settings.attack_step_s + dip_steps * settings.dip_step_s


def _lane(settings: Settings, detector_steps: float, expected_s: float, *, iterative: bool) -> Lane:
    cheap = detector_steps <= settings.fast_lane_max_steps and expected_s <= settings.fast_lane_max_s
    return "fast" if cheap and not iterative else "slow"


def plan_attack(
    settings: Settings,
    spec: AttackSpec,
    params: Mapping[str, Any],
    defense: Defense | None,
    *,
    height: int,
    width: int,
    faces: int = 0,
) -> JobPlan:
    """The plan of attack ``spec`` with resolved ``params`` through ``defense`` (resolved; None: the bare
    detector) on a ``height`` x ``width`` upload with ``faces`` face boxes (crop=faces; 0: the whole image)."""
    steps = int(spec.steps(params))
    scale = pixel_scale(height, width) * max(1, faces)
    samples, judged, dip_steps, iterative = 1, 1, 0.0, False
    if defense is not None:
        purifier = defense.spec
        if purifier.randomized:
            samples, judged = defense.eot_samples, defense.resubmissions
        if purifier.iterative:
            # DIP inside an attack runs at the upload's resolution (docs/ATTACKS.md, "Adaptive attacks"): every
            # attack step runs it once per EOT sample, and the delivered file is judged through full runs.
            iterative = True
            inner, full = purifier.steps(defense.attack_params()), purifier.steps(defense.params)
            dip_steps = (steps * samples * inner + judged * full) * scale
    detector_steps = steps * samples * scale
    budget: BudgetKind = spec.sync_budget
    limit = settings.cw_sync_max_steps if budget == "optimizer" else settings.pgd_sync_max_steps
    expected_s = _seconds(settings, detector_steps + judged * scale, dip_steps)
    return JobPlan(
        kind="attack", method=spec.name, steps=steps, budget=budget if not iterative else "none",
        detector_steps=detector_steps, dip_steps=dip_steps, expected_s=expected_s,
        sync=not iterative and detector_steps <= limit,
        lane=_lane(settings, detector_steps, expected_s, iterative=iterative),
    )  # fmt: skip


def plan_purify(
    settings: Settings,
    spec: PurifierSpec,
    params: Mapping[str, Any],
    *,
    height: int,
    width: int,
    faces: int = 0,
) -> JobPlan:
    """The plan of purifier ``spec`` with resolved ``params`` on a ``height`` x ``width`` upload (``faces`` boxes
    with crop=faces, each purified on its own). Purification is always queued; an iterative purifier works at
    most DFG_PURIFY_MAX_SIDE a side (``core.jobs.working_size``) and always waits in the slow queue."""
    steps = int(spec.steps(params))
    scale = pixel_scale(height, width)
    dip_steps = 0.0
    if spec.iterative:
        h, w = working_size(height, width, settings.purify_max_side)
        dip_steps = steps * pixel_scale(h, w) * max(1, faces)
    # Scoring the image before and after on the detectors: about one detector step.
    expected_s = _seconds(settings, scale, dip_steps)
    return JobPlan(
        kind="purify", method=spec.name, steps=steps, budget="none", detector_steps=scale, dip_steps=dip_steps,
        expected_s=expected_s, sync=False,
        lane="slow" if spec.iterative else "fast",
    )  # fmt: skip


def plan_job(settings: Settings, kind: str, params: Mapping[str, Any], *, height: int, width: int) -> JobPlan:
    """The plan of a job from its JSON ``params`` (``AttackJob`` or ``PurifyJob``), resolving them: for a job queued
    without a plan (by an older API, or a script calling ``app.jobs.enqueue``). A ValueError names a bad value."""
    if kind == PurifyJob.KIND:
        pjob = PurifyJob.from_json(dict(params))
        pspec = purifiers.get(pjob.method)
        return plan_purify(
            settings, pspec, pspec.resolve(pjob.params), height=height, width=width, faces=len(pjob.faces)
        )
    ajob = AttackJob.from_json(dict(params))
    aspec = attacks.get(ajob.method)
    defense = resolve_defense(ajob.defense)
    return plan_attack(
        settings, aspec, aspec.resolve(ajob.params), defense, height=height, width=width, faces=len(ajob.faces)
    )
