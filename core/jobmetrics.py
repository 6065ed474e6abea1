"""The workers' figures for ``/metrics``, as they are kept in Redis: written by the workers, read by the API.

Why Redis and not prometheus-client's multiprocess mode: workers run in other containers or on other hosts than
the API (docker-compose.yml scales them with ``--scale worker=N``), and multiprocess mode needs one directory
that every process writing figures and the process serving them share. Redis is already what they share
(docs/OPERATIONS.md).

Memory stays bounded: one hash of counters whose fields are fixed histogram buckets per (kind, method), and one
sorted set of live workers whose stale members are trimmed on every read. No key per job.
Plain data and functions only: no Redis client, no prometheus-client (the API turns these into metric families).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from core.keys import PREFIX

#: Hash of counters: job outcomes, job-duration buckets and sums, DIP step-rate buckets and sum.
JOBS_KEY = f"{PREFIX}:metrics:jobs"
#: Sorted set: worker name -> the time (Unix seconds) its presence expires unless renewed.
WORKERS_KEY = f"{PREFIX}:metrics:workers"

#: What an attempt of a job ended as. ``retried`` counts attempts that began after an earlier one of the same
#: job (it raised an error that may not recur, or its worker died): one per retry, whoever noticed the failure.
OUTCOMES = ("finished", "failed", "stopped", "retried")
#: Upper bounds (seconds) of the job-duration histogram; a job lasts from a second (JPEG) to an hour (DIP, paper).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: Upper bounds of the DIP steps-per-second histogram (docs/PERFORMANCE.md: ~10 on a CPU core, ~100+ on a GPU).
DIP_RATE_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

_SEP = "|"
_LABEL = re.compile(r"[a-z0-9_]{1,32}")


def label(value: object) -> str:
    """A job's kind or method as a label value; anything unexpected is ``other`` (bounded label sets)."""
    text = str(value)
    return text if _LABEL.fullmatch(text) else "other"


def bucket_bound(value: float, bounds: tuple[float, ...]) -> str:
    """The field suffix of the smallest bucket holding ``value`` (buckets are stored non-cumulative)."""
    for bound in bounds:
        if value <= bound:
            return repr(bound)
    return "+Inf"


def outcome_field(kind: str, method: str, outcome: str) -> str:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown job outcome {outcome!r}; choose one of {OUTCOMES}")
    return _SEP.join(("jobs_total", label(kind), label(method), outcome))


def duration_fields(kind: str, method: str, seconds: float) -> tuple[str, str]:
    """The (bucket field, sum field) a finished job's duration increments."""
    k, m = label(kind), label(method)
    return _SEP.join(("job_seconds", k, m, bucket_bound(seconds, DURATION_BUCKETS))), _SEP.join(
        ("job_seconds_sum", k, m)
    )


def dip_rate_fields(steps_per_s: float) -> tuple[str, str]:
    return _SEP.join(("dip_rate", bucket_bound(steps_per_s, DIP_RATE_BUCKETS))), "dip_rate_sum"


@dataclass
class Histogram:
    """Non-cumulative bucket counts keyed by their upper bound (``math.inf`` for +Inf), and the sum."""

    counts: dict[float, int] = field(default_factory=dict)
    total: float = 0.0

    def cumulative(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, observations <= le), ending with +Inf."""
        out, running = [], 0
        for bound in (*bounds, math.inf):
            running += self.counts.get(bound, 0)
            out.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        return out


@dataclass
class JobFigures:
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (kind, method, outcome) -> count
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (kind, method)
    dip_rate: Histogram = field(default_factory=Histogram)


def _bound(text: str) -> float:
    return math.inf if text == "+Inf" else float(text)


def parse(raw: dict[bytes, bytes]) -> JobFigures:
    """The hash at ``JOBS_KEY`` as figures. Fields this version does not know are skipped (a newer worker)."""
    figures = JobFigures()
    for key, value in raw.items():
        parts = key.decode().split(_SEP)
        match parts:
            case ["jobs_total", kind, method, outcome]:
                figures.outcomes[(kind, method, outcome)] = int(value)
            case ["job_seconds", kind, method, bound]:
                figures.durations.setdefault((kind, method), Histogram()).counts[_bound(bound)] = int(value)
            case ["job_seconds_sum", kind, method]:
                figures.durations.setdefault((kind, method), Histogram()).total = float(value)
            case ["dip_rate", bound]:
                figures.dip_rate.counts[_bound(bound)] = int(value)
            case ["dip_rate_sum"]:
                figures.dip_rate.total = float(value)
    return figures
