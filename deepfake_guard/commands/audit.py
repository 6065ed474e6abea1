"""``deepfake-guard audit CHECKPOINT DATA --profile quick --out DIR``: how many of the owner's fakes get through their
detector, at its threshold, clean, re-encoded and under attack, with intervals and sanity flags (docs/AUDIT.md).

Writes DIR/report.json (docs/schemas/audit.schema.json), DIR/report.html and DIR/per_image.csv. With ``--queue URL``
the audit runs on a service's workers instead (``deepfake_guard.commands.audit_client``), CHECKPOINT and
``--transfer-from`` naming its detectors.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deepfake_guard.commands.argtypes import float_text, parse_threshold, positive_int
from deepfake_guard.commands.methods import DEFENSE_PREFIX, add_defense_arguments, given_defense


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="a detector owner's robustness audit of a data set: clean, laundering, attacks, sanity flags, HTML report",
        description="Audit a detector on DATA/fake and DATA/real (either may be missing): clean operating point, "
        "laundering (JPEG, resize, blur, noise, a sharing site), white-box L-inf, attacks that survive laundering, "
        "transfer from other detectors and, with --defense, adaptive attacks through a purifier.",
    )
    p.add_argument("checkpoint", type=Path,
                   help="the checkpoint (path without suffix); with --queue, its name on the service")  # fmt: skip
    p.add_argument("data", type=Path, help="a folder with fake/ and/or real/ images")
    p.add_argument("--profile", choices=("quick", "standard"), default="quick", help="budgets (docs/AUDIT.md)")
    p.add_argument("-o", "--out", type=Path, default=Path("audit"), help="folder for report.json/.html, per_image.csv")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="operating threshold (default: the checkpoint's fitted one, else 0.5)")  # fmt: skip
    p.add_argument("--eps", type=float_text, nargs="+", default=None, help="L-inf budgets of the white-box curve")
    p.add_argument("--l2-rms", type=float_text, nargs="+", default=None, metavar="RMS",
                   help="budgets of the white-box L2 curve, per pixel (root-mean-square change, e.g. 2/255); each "
                   "row's L2 radius is RMS x sqrt(3 x H x W) of the detector's input")  # fmt: skip
    p.add_argument("--transfer-from", type=Path, nargs="*", default=[], metavar="CHECKPOINT",
                   help="craft transfer attacks on these detectors (black-box); with --queue, their names on the "
                   "service")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="THREAT.PARAM=VALUE",
                   help="override a budget, e.g. --set eot_pgd.steps=50 (repeatable)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="the audit's seed (every shard's seed derives from it)")
    p.add_argument("--shard-size", type=positive_int, default=16, help="images per shard")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's own)")
    add_defense_arguments(p)
    p.add_argument("--queue", metavar="URL", default=None,
                   help="send the audit to the service at URL, whose workers share its shards, instead of running "
                   "it here")  # fmt: skip
    p.add_argument("--api-key", default=None, help="with --queue: the service's API key, if it requires one")


#: What only an audit run here has, with their defaults: refused with --queue, never silently dropped. The service's
#: own DFG_AUDIT_SHARD_SIZE sizes its shards, and its workers their device and threads.
LOCAL_ONLY = {"shard_size": 16, "device": "auto", "threads": None}


def _defense_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The defence flags as POST /audits' form fields, which are POST /attack's: ``defense``, the purifier's
    parameters prefixed ``defense_`` (``--defense-quality`` is ``defense_quality``) and the adaptive attack's own
    (``--eot-samples`` is ``eot_samples``). A flag the defence does not take is refused here, as in-process."""
    from models.attacks.adaptive import NO_DEFENSE

    given_defense(args)  # a stray flag is a ValueError naming it
    if args.defense == NO_DEFENSE:
        return {}
    fields: dict[str, Any] = {"defense": args.defense}
    for name, value in vars(args).items():
        if value is None:
            continue
        if name.startswith("defense_param_"):
            fields[DEFENSE_PREFIX + name.removeprefix("defense_param_")] = value
        elif name.startswith("adaptive_"):
            fields[name.removeprefix("adaptive_")] = value
    return fields


def _run_remote(args: argparse.Namespace) -> int:
    import httpx

    from deepfake_guard.commands.audit_client import ServiceError, run_remote

    given = sorted(f"--{k.replace('_', '-')}" for k, v in LOCAL_ONLY.items() if getattr(args, k) != v)
    if given:
        print(f"error: --queue runs the audit on the service's workers; {given} apply only to an audit run here "
              "(docs/AUDIT.md, As a service job)")  # fmt: skip
        return 2
    try:
        record = run_remote(
            args.queue, args.checkpoint.name, args.data, args.out, profile=args.profile, eps=args.eps,
            threshold=args.threshold, api_key=args.api_key, transfer_from=[p.name for p in args.transfer_from],
            defense=_defense_fields(args), overrides=args.overrides, seed=args.seed, l2_rms=args.l2_rms,
        )  # fmt: skip
    except (ServiceError, ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    except httpx.HTTPError as exc:
        print(f"error: the service at {args.queue} did not answer: {exc}")
        return 2
    print(record["summary"])
    print(f"wrote {args.out / 'report.html'}, {args.out / 'report.json'} and {args.out / 'per_image.csv'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.queue is not None:
        return _run_remote(args)
    from tqdm import tqdm

    from models import checkpoint
    from models.attacks.adaptive import resolve_defense
    from models.audit import report
    from models.audit.profiles import audit_defense, audit_threats, parse_overrides
    from models.audit.runner import AuditData, assemble, original_png, run_audit
    from models.audit.threats import AuditTarget
    from models.devices import resolve_device
    from models.evaluation.run import environment

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        loaded = checkpoint.load(args.checkpoint, map_location=device)
        data = AuditData.from_folder(args.data)
        defense = resolve_defense(audit_defense(given_defense(args), args.profile))
        overrides = parse_overrides(args.overrides)
        sources = {}
        for path in args.transfer_from:
            src = checkpoint.load(path, map_location=device)
            sources[src.name] = (src.detector.eval(), src.meta.operating_point()[0])
        threats = audit_threats(args.profile, sources=list(sources), defense=defense is not None, eps=args.eps,
                                overrides=overrides, l2=args.l2_rms)  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    threshold, source = loaded.meta.operating_point(args.threshold)
    detector = loaded.detector.eval()
    target = AuditTarget(loaded.name, detector, threshold, sources=sources, defense=defense)
    bars: dict[str, Any] = {}

    def on_shard(part: Any, done: int, total: int) -> None:
        tid = part.threat.id
        if tid not in bars:
            for bar in bars.values():
                bar.close()
            bars[tid] = tqdm(total=len(data.items), desc=tid[:48], unit="img", dynamic_ncols=True)
        bars[tid].update(part.stop - part.start)

    try:
        results = run_audit(target, data, threats, seed=args.seed, shard_size=args.shard_size, on_shard=on_shard)
    except ValueError as exc:  # an image the fitting refuses, a transfer source that cannot take an image...
        print(f"error: {exc}")
        return 2
    finally:
        for bar in bars.values():
            bar.close()
    meta = {
        "detector": {
            "name": loaded.name,
            "sha256": loaded.sha256,
            "architecture": loaded.meta.architecture,
            "fitting": detector.fitting.describe(),
            "demo_data": loaded.meta.demo_data,
        },
        "threshold_source": source,
        "profile": {"name": args.profile, "overrides": overrides, "eps": args.eps, "l2_rms": args.l2_rms},
        "dataset": args.data.name,
        "environment": environment(device),
    }
    record = assemble(target, data, threats, results, meta=meta, seed=args.seed, shard_size=args.shard_size)
    paths = report.write_all(record, report.gallery_of(results), original_png(target, data), args.out)
    print(record["summary"])
    if record["unreliable"]:
        print("unreliable: " + "; ".join(f["reason"] for f in record["sanity"]["flags"]))
    print(f"wrote {paths['html']}, {paths['json']} and {paths['csv']}")
    return 0
