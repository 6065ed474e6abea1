"""PNG figures of a results dict, in the style of the paper's bar charts. matplotlib is imported lazily (it is a
CLI-only dependency of ``models``), with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.evaluation.report import attack_label
from models.purify import DIP


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(results: dict[str, Any], role: str, path: Path, title: str) -> Path | None:
    entries = [e for e in results["summary"] if e["role"] == role or (role == "lipschitz" and e["role"] == "base")]
    if role == "lipschitz":
        fam = {d["name"]: d["family"] for d in results["detectors"]}
        entries = [e for e in entries if e["role"] == "lipschitz" or fam[e["detector"]] == "resnet"]
        if not any(e["role"] == "lipschitz" for e in entries):
            return None
    if not entries:
        return None
    plt = _pyplot()
    keys = ["clean"] + [k for k in entries[0] if k.endswith((" BB", " WB"))]
    labels = ["clean"] + [f"{attack_label(k.rsplit(' ', 1)[0])}\n{k.rsplit(' ', 1)[1]}" for k in keys[1:]]
    width = 0.8 / len(entries)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(keys), 4))
    for i, e in enumerate(entries):
        values = [100 * (e[k] or 0.0) for k in keys]
        name = e["detector"] + (f" (λ={e['lambda']:g})" if e["lambda"] is not None else "")
        xs = [j + (i - (len(entries) - 1) / 2) * width for j in range(len(keys))]
        bars = ax.bar(xs, values, width, label=name)
        for b, k in zip(bars, keys, strict=True):
            text = "–" if e[k] is None else f"{100 * e[k]:.0f}"
            ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(keys)), labels, fontsize=8)
    ax.set_ylabel("accuracy on fake images (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _dip_curves(results: dict[str, Any], path: Path) -> Path | None:
    dip = results.get(DIP.name) or {}
    if "fixed" not in dip:
        return None
    plt = _pyplot()
    curve = dip["fixed"]["curve"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for group, colour in (("real", "tab:green"), ("fake", "tab:red"), ("fooled fakes", "tab:purple"),
                          ("not-fooled fakes", "tab:orange")):  # fmt: skip
        ema = [
            (c["iteration"], c["ema"]["mean_p_fake"][group])
            for c in curve
            if c["ema"]["mean_p_fake"][group] is not None
        ]
        raw = [
            (c["raw_iteration"], c["raw"]["mean_p_fake"][group])
            for c in curve
            if c["raw"]["mean_p_fake"][group] is not None
        ]
        if ema:
            ax.plot(*zip(*ema, strict=True), "-o", color=colour, label=f"{group} (EMA)", markersize=3)
        if raw:
            ax.plot(*zip(*raw, strict=True), "--x", color=colour, label=f"{group} (raw)", markersize=3, alpha=0.7)
        undefended = dip["no_defence"]["mean_p_fake"][group]
        if undefended is not None:
            ax.axhline(undefended, color=colour, linestyle=":", linewidth=0.8)
    for t in results["config"]["dip_thresholds"]:
        ax.axhline(t, color="grey", linewidth=0.5)
    ax.set_xlabel("DIP iteration")
    ax.set_ylabel("mean P(fake)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"P(fake) of DIP outputs ({dip['detector']}); dotted: undefended", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    for t in results["config"]["dip_thresholds"]:
        pts = [(c["iteration"], c["ema"]["thresholds"][str(t)]["accuracy"]) for c in curve]
        ax2.plot(*zip(*[(i, 100 * a) for i, a in pts], strict=True), "-o", markersize=3, label=f"acc, threshold {t}")
        restored = [(c["iteration"], c["ema"]["thresholds"][str(t)]["restored"]) for c in curve]
        restored = [(i, 100 * r) for i, r in restored if r is not None]
        if restored:
            ax2.plot(*zip(*restored, strict=True), "--", label=f"restored, threshold {t}")
    ax2.set_xlabel("DIP iteration")
    ax2.set_ylabel("%")
    ax2.set_ylim(-2, 102)
    ax2.set_title("accuracy on the subsample / fooled fakes restored (EMA output)", fontsize=9)
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    delivery = results["config"]["headline_delivery"]
    made = [
        _bars(results, "base", out / "attacks.png", f"Fake-class accuracy under attack (delivery {delivery})"),
        _bars(results, "lipschitz", out / "lipschitz.png", f"Lipschitz-regularised ResNets (delivery {delivery})"),
        _dip_curves(results, out / "dip.png"),
    ]
    return [p for p in made if p is not None]
