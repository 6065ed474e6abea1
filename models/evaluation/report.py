"""``report.md`` and ``results.json`` from the results dict of ``models.evaluation.run.evaluate``.

Percentages are rounded to one decimal, as the paper's tables; "–" marks an undefined value (no image of
that kind, no successful attack) and never a zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from models.attacks import FGSM
from models.evaluation.attacks import summary_table
from models.methods import eps_text
from models.purify import DIP

ATTACK_LABELS = {FGSM.name: "FGSM", "cw_default": "CW-L2 (default)", "cw_paper": "CW-L2 (paper)"}


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def metric_cells(m: dict[str, Any]) -> list[str]:
    """accuracy, AUROC, fake precision/recall, real precision/recall of a ``binary_metrics`` dict, in %."""
    return [pct(m["accuracy"]), pct(m["auroc"])] + [
        pct(m[kind][cls]) for cls in ("fake", "real") for kind in ("precision", "recall")
    ]


def attack_label(name: str) -> str:
    return ATTACK_LABELS.get(name, name)


def _run_section(results: dict[str, Any]) -> str:
    cfg, env, data = results["config"], results["environment"], results["data"]
    cw = ", ".join(f"`{p}`" for p in cfg["cw_presets"]) + (
        f" with overrides {cfg['cw_overrides']}" if cfg["cw_overrides"] else ""
    )
    lines = [
        f"# Evaluation report ({cfg['mode']} mode)",
        "",
        f"- Run {env['date']} on {env['device']}, {env['torch_threads']} torch thread(s), torch {env['torch']}; "
        f"total {results['timings']['total']:.0f} s.",
        f"- Data: `{data['path']}`, test split {data['test_counts']} (R1 uses all of it); attacked subsample "
        f"{data['attacked']} (seed {cfg['seed']}).",
        f"- FGSM eps {cfg['fgsm_eps']}; CW-L2 presets {cw}; untargeted on the true label. Deliveries judged: "
        f"{', '.join(cfg['deliveries'])}; headline tables use `{cfg['headline_delivery']}`.",
    ]
    lines.append(
        f"- Sizes: {cfg['n_per_class'] or 'all'} attacked test images per class; Lipschitz sweep lambdas "
        f"{list(cfg['lipschitz_lambdas']) or 'none'} x {cfg['lipschitz_epochs']} epoch(s) on "
        f"{cfg['lipschitz_train_per_class'] or 'all'} training images per class; DIP "
        + (
            f"{cfg['dip_per_category']} image(s) per category x {cfg['dip_iterations']} steps"
            + (f", label-free stop capped at {cfg['dip_auto_cap']}" if cfg["dip_auto"] else "")
            if cfg[DIP.name]
            else "not run"
        )
        + "."
    )
    lines += [f"- Note: {n}" for n in results["notes"]]
    return "\n".join(lines)


def _clean_section(results: dict[str, Any]) -> str:
    rows = []
    for d in results["detectors"]:
        m = results["clean"][d["name"]]
        rows.append(
            [
                d["name"],
                d["architecture"],
                d["role"],
                *metric_cells(m),
            ]
        )
    header = [
        "detector",
        "architecture",
        "role",
        "acc",
        "AUROC",
        "fake prec.",
        "fake recall",
        "real prec.",
        "real recall",
    ]
    return "## R1 Clean detection (whole test split, %)\n\n" + table(header, rows) + _calibration_rows(results)


def _calibration_rows(results: dict[str, Any]) -> str:
    """Operating points (models/evaluation/calibration.py): test-split ROC figures, and the threshold fitted on
    val/ for the stated FPR with the rates it gives on test."""
    cal = results.get("calibration") or {}
    if not cal:
        return ""
    rows = []
    for name, c in cal.items():
        t = c.get("test", {})
        at = t.get("at_threshold", {})
        rows.append(
            [name, num(t.get("auroc")), pct(t.get("eer")), pct(t.get("tpr_at_fpr_1pct")), pct(t.get("tpr_at_fpr_5pct")),
             f"{c['threshold']:.4g}", pct(c["target_fpr"]), pct(at.get("fpr")), pct(at.get("tpr"))]
        )  # fmt: skip
    header = ["detector", "AUROC", "EER", "TPR@1% FPR", "TPR@5% FPR", "threshold (val)", "target FPR", "test FPR",
              "test TPR"]  # fmt: skip
    return "\n\n### Operating points (test split; threshold fitted on val/, %)\n\n" + table(header, rows)


def _summary_rows(results: dict[str, Any], role: str) -> tuple[list[str], list[list[str]]]:
    attacks = results["config"]["cw_presets"]
    names = [FGSM.name, *(f"cw_{p}" for p in attacks)]
    header = ["detector", "clean"] + [f"{attack_label(a)} {s}" for a in names for s in ("BB", "WB")]
    rows = []
    for entry in results["summary"]:
        if entry["role"] != role:
            continue
        rows.append(
            [entry["detector"], pct(entry["clean"])] + [pct(entry[f"{a} {s}"]) for a in names for s in ("BB", "WB")]
        )
    return header, rows


def _attack_section(results: dict[str, Any]) -> str:
    cfg = results["config"]
    parts = [
        "## R2 Fake-class accuracy under attack (%)",
        "",
        "Accuracy on the attacked fakes (the paper's measure). WB: crafted on the detector itself; BB: crafted on "
        "the other architecture and transferred. Clean = the same fakes unattacked.",
    ]
    for delivery in cfg["deliveries"]:
        names = [FGSM.name, *(f"cw_{p}" for p in cfg["cw_presets"])]
        summary = summary_table(results["detectors"], results["attacks"], names, delivery)
        header, rows = _summary_rows({**results, "summary": summary}, "base")
        tag = " (headline, as the paper judged)" if delivery == cfg["headline_delivery"] else ""
        parts += ["", f"### Delivery `{delivery}`{tag}", "", table(header, rows)]
    rows = []
    for r in results["attacks"]:
        rows.append(
            [
                attack_label(r["attack"]),
                f"{r['source']} → {r['target']}",
                r["setting"],
                r["delivery"],
                pct(r["fake_accuracy"]),
                pct(r["real_accuracy"]),
                f"{pct(r['success_rate'])} ({r['fooled']}/{r['caught_before']})",
                num(r["median_l2"]),
                num(r["median_linf"]),
                num(r["median_psnr"], 3),
                num(r["seconds_per_image"], 2),
            ]
        )
    header = [
        "attack",
        "source → target",
        "setting",
        "delivery",
        "fake acc",
        "real acc",
        "success on caught fakes",
        "median L2",
        "median L∞",
        "median PSNR (dB)",
        "s / image (crafting)",
    ]
    parts += [
        "",
        "### Every (attack, source, target, delivery)",
        "",
        "Real acc: reals attacked with the same untargeted attack (on their true label) still called real. Success: "
        "of the fakes the target caught before the attack, the fraction it calls real after. Norms and PSNR compare "
        "the delivered image with the clean one, medians over the successful attacks.",
        "",
        table(header, rows),
    ]
    return "\n".join(parts)


def _lipschitz_section(results: dict[str, Any]) -> str:
    lip = [e for e in results["summary"] if e["role"] == "lipschitz"]
    parts = ["## R3 Lipschitz-regularised detectors (fake-class accuracy %, headline delivery)"]
    sweep = results.get("lipschitz_sweep")
    if not lip:
        return parts[0] + "\n\nNot run (no lambdas, no ResNet checkpoint or no train/val data; see the notes above)."
    cfg = results["config"]
    if sweep:
        runs = sweep["runs"]
        parts += [
            "",
            f"Fine-tuned from `{sweep['base']}` as `{sweep['architecture']}`: {cfg['lipschitz_epochs']} epoch(s) on "
            f"{runs[0]['train_images']} training images, Adam lr {cfg['lipschitz_lr']}, "
            f"batch {cfg['lipschitz_batch_size']}, "
            "selection on val; lambda = 0 is the control (same swap and schedule, no penalty)."
            + (" **Quick mode: a tiny sweep, not comparable with the paper.**" if cfg["mode"] == "quick" else ""),
        ]
    base = [e for e in results["summary"] if e["role"] == "base" and _family(results, e["detector"]) == "resnet"]
    header, _ = _summary_rows(results, "lipschitz")
    header = [*header, "mean (dZ/dx)^2", "test acc", "s / epoch"]
    seconds = {r["name"]: r["epoch_seconds"] for r in (sweep["runs"] if sweep else [])}
    keys = header[1:-3]
    rows = []
    for e in base + lip:
        per_epoch = seconds.get(e["detector"])
        rows.append(
            [f"{e['detector']}" + (f" (λ={e['lambda']:g})" if e["lambda"] is not None else " (none)")]
            + [pct(e[_key(k)]) for k in keys]
            + [
                num(results["input_gradient_norm"][e["detector"]]),
                pct(results["clean"][e["detector"]]["accuracy"]),
                num(sum(per_epoch) / len(per_epoch), 3) if per_epoch else "–",
            ]
        )
    regs = [e for e in lip if e["lambda"]]
    if regs:
        mean_row, best_row = ["mean over λ > 0"], ["best λ per column (chosen on test, as the paper)"]
        for k in keys:
            vals = [e[_key(k)] for e in regs if e[_key(k)] is not None]
            mean_row.append(pct(sum(vals) / len(vals)) if vals else "–")
            best_row.append(pct(max(vals)) if vals else "–")
        rows += [mean_row + ["–"] * 3, best_row + ["–"] * 3]
    parts += ["", table(header, rows)]
    return "\n".join(parts)


def _key(column: str) -> str:
    """Summary key of a rendered column header ("FGSM BB" -> "fgsm BB")."""
    if column == "clean":
        return "clean"
    label, setting = column.rsplit(" ", 1)
    inverse = {v: k for k, v in ATTACK_LABELS.items()}
    return f"{inverse.get(label, label)} {setting}"


def _family(results: dict[str, Any], name: str) -> str:
    return next(d["family"] for d in results["detectors"] if d["name"] == name)


def _dip_section(results: dict[str, Any]) -> str:
    dip = results.get(DIP.name)
    if not dip:
        return "## R4 DIP purification\n\nNot run."
    cfg = results["config"]
    t_head, s_head = str(cfg["dip_threshold"]), cfg["dip_stop_at"]
    parts = [
        "## R4 DIP purification",
        "",
        f"Detector `{dip['detector']}`; attacked fakes delivered as `{dip['delivery']}`; CW = `{dip['cw_attack']}`. "
        f"Up to {cfg['dip_per_category']} images per category (seeded draw); `paper` preset, fixed stop, "
        f"{cfg['dip_iterations']} steps, outputs read at snapshots {list(cfg['dip_snapshots'])}. Accuracy etc. "
        "are over all sampled images; *restored* = fooled fakes called fake again, *kept* = every other image "
        "classified right.",
        "",
        table(
            ["category", "available", "sampled"],
            [[k, str(v["available"]), str(v["sampled"])] for k, v in dip["counts"].items()],
        ),
    ]
    if "fixed" not in dip:
        return "\n".join([*parts, "", "No image to purify."])
    head = next(c for c in dip["fixed"]["curve"] if c["iteration"] == s_head)

    def row(label: str, m: dict[str, Any]) -> list[str]:
        return [
            label,
            *metric_cells(m),
            pct(m["restored"]),
            pct(m["kept"]),
        ]

    header = ["", "acc", "AUROC", "fake prec.", "fake recall", "real prec.", "real recall", "restored", "kept"]
    rows = [
        row(f"DIP, EMA output at {s_head}, threshold {t_head}", head["ema"]["thresholds"][t_head]),
        row(f"DIP, raw output at {head['raw_iteration']}, threshold {t_head}", head["raw"]["thresholds"][t_head]),
        row(f"no defence, threshold {t_head}", dip["no_defence"]["thresholds"][t_head]),
        row("no defence, threshold 0.5", dip["no_defence"]["thresholds"]["0.5"])
        if "0.5" in dip["no_defence"]["thresholds"]
        else [],
    ]
    if "auto" in dip:
        auto = dip["auto"]
        its = auto["iterations"]
        rows.append(
            row(
                f"DIP label-free stop (default preset, cap {auto['cap']}; stopped by {auto['stopped_by']}, "
                f"iterations {min(its)}–{max(its)}), threshold {t_head}",
                auto["thresholds"][t_head],
            )
        )
    parts += ["", "### Headline (paper: iteration 6,000, threshold 0.25)", "", table(header, [r for r in rows if r])]

    thresholds = [str(t) for t in cfg["dip_thresholds"]]
    sens_header = (
        ["iteration"]
        + [f"acc @ {t}" for t in thresholds]
        + [f"restored @ {t}" for t in thresholds]
        + [f"kept @ {t}" for t in thresholds]
        + ["AUROC", "mean P(fake) fooled (EMA / raw)", "mean P(fake) real (EMA / raw)"]
    )
    sens = []
    for c in dip["fixed"]["curve"]:
        e, r = c["ema"], c["raw"]
        sens.append(
            [str(c["iteration"])]
            + [pct(e["thresholds"][t]["accuracy"]) for t in thresholds]
            + [pct(e["thresholds"][t]["restored"]) for t in thresholds]
            + [pct(e["thresholds"][t]["kept"]) for t in thresholds]
            + [
                pct(e["thresholds"][thresholds[0]]["auroc"]),
                f"{num(e['mean_p_fake']['fooled fakes'], 2)} / {num(r['mean_p_fake']['fooled fakes'], 2)}",
                f"{num(e['mean_p_fake']['real'], 2)} / {num(r['mean_p_fake']['real'], 2)}",
            ]
        )
    parts += ["", "### Sensitivity to the stop iteration and the threshold (EMA output)", "", table(sens_header, sens)]

    cats = list(dip["counts"])
    cat_rows = []
    for name in cats:
        if not dip["counts"][name]["sampled"]:
            continue
        cat_rows.append(
            [
                name,
                str(dip["counts"][name]["sampled"]),
                pct(dip["no_defence"]["thresholds"][t_head]["per_category"].get(name)),
            ]
            + [pct(c["ema"]["thresholds"][t_head]["per_category"].get(name)) for c in dip["fixed"]["curve"]]
        )
    cat_header = ["category", "n", "no defence"] + [f"DIP @ {c['iteration']}" for c in dip["fixed"]["curve"]]
    parts += ["", f"### Correctly classified per category (%, threshold {t_head})", "", table(cat_header, cat_rows)]
    parts += [
        "",
        f"DIP cost: {dip['fixed']['seconds']:.0f} s for {dip['n']} images "
        f"({dip['fixed']['seconds_per_image']:.1f} s per image at {cfg['dip_iterations']} steps, batched)"
        + (
            f"; label-free run {dip['auto']['seconds']:.0f} s."
            if "auto" in dip
            else "; label-free stop not run"
            + (
                " (quick mode: it cannot fire before 800 steps, the quick run's length)."
                if cfg["mode"] == "quick"
                else "."
            )
        ),
    ]
    return "\n".join(parts)


def _suite_cells(name: str, v: dict[str, Any]) -> list[str]:
    fooled = " / ".join(str(c) for c in v["fooled_by"].values())
    return [name, str(v["n"]), pct(v["clean_accuracy"]), pct(v["robust_accuracy"]), fooled, str(v["forward_passes"])]


def _r5_section(results: dict[str, Any]) -> str:
    r5 = results.get("r5")
    if not r5:
        return "## R5 Does the defence hold?\n\nNot run."
    cfg = results["config"]
    parts = [
        "## R5 Does the defence hold? Non-adaptive vs adaptive PGD through each purifier",
        "",
        f"Fake-class accuracy (%) of `purify -> detect` on {r5['fakes']} test fakes that `{r5['detector']}` calls "
        f"fake: PGD ({cfg['r5_steps']} steps of eps / 4) crafted on the bare detector then purified (non-adaptive), "
        "and the same PGD through the purifier (BPDA, EOT: adaptive), delivered as 8-bit PNG and judged by the real "
        "purifier; a randomised one over its resubmissions with seeds the attack never drew. *worst*: caught only "
        'if every run catches it. Lower means the attack works (docs/ATTACKS.md, "Adaptive attacks").',
        "",
    ]
    rows = []
    for row in r5["rows"]:
        d = row["defense"]
        for th, acc in row["thresholds"].items():
            if th != "0.5" and not d["randomized"]:
                continue  # the second threshold is the iterative purifier's (R4's); cheap ones at 0.5 only
            setting = ", ".join(f"{k} {v}" for k, v in d["params"].items())
            if d["randomized"]:
                setting += f"; {d['attack_params'].get('max_iterations', '')} steps inside, EOT {d['eot_samples']}"
                setting += f", {d['resubmissions']} resubmissions"
            rows.append([
                row["purifier"], setting, d["bpda"], eps_text(row["eps"]), th,
                pct(acc["clean"]["worst"]), f"{pct(acc['non_adaptive']['worst'])} / {pct(acc['non_adaptive']['mean'])}",
                f"{pct(acc['adaptive']['worst'])} / {pct(acc['adaptive']['mean'])}",
                f"{row['non_adaptive_s_per_image']:.2f} / {row['adaptive_s_per_image']:.2f}",
            ])  # fmt: skip
    header = ["purifier", "setting", "BPDA", "eps", "threshold", "clean", "non-adaptive worst / mean",
              "adaptive worst / mean", "s/img (non-adaptive / adaptive)"]  # fmt: skip
    parts.append(table(header, rows) if rows else "No fake the detector calls fake among the attacked images.")
    suite = r5["suite"]
    if suite:
        parts += [
            "",
            "Standard two-class suite (APGD-CE + FAB + Square, worst case per image, L-inf "
            f"{eps_text(cfg['r5_suite_eps'])}, `{cfg['r5_suite_budget']}` budget, docs/ATTACKS.md), bare "
            "detectors, on the attacked images:",
            "",
            table(
                ["detector", "n", "clean acc", "robust acc", "fooled by (APGD-CE / FAB / Square)", "forward passes"],
                [_suite_cells(name, v) for name, v in suite.items()],
            ),
        ]
    return "\n".join(parts)


def render_markdown(results: dict[str, Any]) -> str:
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in results["timings"].items())
    figures = results.get("figures", [])
    sections = [
        _run_section(results),
        _clean_section(results),
        _attack_section(results),
        _lipschitz_section(results),
        _dip_section(results),
        _r5_section(results),
        "## Figures\n\n" + ("\n".join(f"![{Path(f).stem}]({Path(f).name})" for f in figures) or "None written."),
        f"## Timings\n\n{timings}",
    ]
    return "\n\n".join(sections) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False) + "\n")
