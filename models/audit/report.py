"""The audit's outputs: ``report.json`` (the record), ``report.html`` (self-contained: figures and images inline,
nothing loaded from elsewhere) and ``per_image.csv`` (docs/AUDIT.md, "What you get")."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.detector import CLASS_NAMES, FAKE_INDEX
from models.evaluation.calibration import roc_curve

#: Adversarial fakes shown beside their originals in the report.
GALLERY_SIZE = 6


def _figure_png(draw: Callable[[Any], None], *, size: tuple[float, float] = (5.0, 3.4)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


#: The white-box curves: threat name -> (its budget parameter, the figure's x label and title).
CURVES = {
    "linf_suite": ("eps", "L-inf budget eps (x / 255)", "White-box L-inf (APGD-CE + FAB + Square)"),
    "l2_suite": ("rms", "L2 budget per pixel, root-mean-square (x / 255)", "White-box L2 (APGD-CE + FAB)"),
}


def _rate_points(
    rows: list[dict[str, Any]], key: str, budget: str
) -> tuple[list[float], list[float], list[list[float]]]:
    xs: list[float] = []
    ys: list[float] = []
    err: list[list[float]] = [[], []]
    for r in rows:
        m = r["metrics"][key]
        if m["rate"] is None:
            continue
        xs.append(255 * r["params"][budget])
        ys.append(100 * m["rate"])
        err[0].append(100 * (m["rate"] - m["ci95"][0]))
        err[1].append(100 * (m["ci95"][1] - m["rate"]))
    return xs, ys, err


def eps_curve(record: dict[str, Any], name: str = "linf_suite") -> str | None:
    """Evasion and false alarms against the budget of one white-box curve (``CURVES``); None without its rows."""
    budget, xlabel, title = CURVES[name]
    curve = sorted((r for r in record["threats"] if r["name"] == name), key=lambda r: r["params"][budget])
    if not curve:
        return None

    def draw(ax: Any) -> None:
        for key, label in (("evasion", "fakes passed as real"), ("false_alarms", "reals flagged fake")):
            xs, ys, err = _rate_points(curve, key, budget)
            if xs:
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        if "eps_l2" in curve[0]:  # each tick also gives the radius it stands for, at the detector's input size
            c, h, w = curve[0]["input_size"]
            ticks = [255 * r["params"][budget] for r in curve]
            ax.set_xticks(ticks, [f"{t:g}\n{r['eps_l2']:.3g}" for t, r in zip(ticks, curve, strict=True)], fontsize=8)
            xlabel_shown = f"{xlabel}\nunder each: the L2 radius at the input size {c} x {h} x {w}"
        else:
            xlabel_shown = xlabel
        ax.set_xlabel(xlabel_shown)
        ax.set_ylabel("% of images (95 % interval)")
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.legend(fontsize=8)

    return _figure_png(draw)


def laundering_bars(record: dict[str, Any]) -> str | None:
    rows = [r for r in record["threats"] if r["family"] in ("clean", "laundering", "survives laundering")]
    rows = [r for r in rows if r["metrics"]["evasion"]["rate"] is not None]
    if not rows:
        return None

    def draw(ax: Any) -> None:
        names = [r["id"] for r in rows]
        rates = [100 * r["metrics"]["evasion"]["rate"] for r in rows]
        lo = [100 * (r["metrics"]["evasion"]["rate"] - r["metrics"]["evasion"]["ci95"][0]) for r in rows]
        hi = [100 * (r["metrics"]["evasion"]["ci95"][1] - r["metrics"]["evasion"]["rate"]) for r in rows]
        ax.barh(range(len(rows)), rates, xerr=[lo, hi], capsize=3, color="#c0504d")
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("fakes passed as real, % (95 % interval)")
        ax.set_xlim(0, 100)
        ax.set_title("Re-encoding and other laundering")

    return _figure_png(draw, size=(6.0, 0.35 * len(rows) + 1.4))


def roc_figure(record: dict[str, Any]) -> str | None:
    labels = torch.tensor([CLASS_NAMES.index(r["label"]) for r in record["per_image"]])
    if not ((labels == FAKE_INDEX).any() and (labels != FAKE_INDEX).any()):
        return None
    shown = [r for r in record["threats"] if r["family"] != "sanity"]

    def draw(ax: Any) -> None:
        for r in shown:
            p = torch.tensor([img["p_fake"][r["id"]] for img in record["per_image"]], dtype=torch.float64)
            fpr, tpr, _ = roc_curve(p, labels)
            style = {"linewidth": 2.2, "color": "black"} if r["name"] == "clean" else {"linewidth": 1, "alpha": 0.8}
            ax.plot(fpr.numpy(), tpr.numpy(), label=r["id"], **style)
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_xlabel("reals flagged fake (FPR)")
        ax.set_ylabel("fakes caught (TPR)")
        ax.set_title("ROC: clean (black) and under each threat")
        ax.legend(fontsize=5, loc="lower right")

    return _figure_png(draw, size=(5.4, 5.0))


def _pct(m: dict[str, Any]) -> str:
    if m["rate"] is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{100 * m['rate']:.1f} % <small>[{100 * lo:.1f}, {100 * hi:.1f}]</small> ({m['k']}/{m['n']})"


def _radius(row: dict[str, Any]) -> str:
    """An L2 row's radius at the detector's input size (its budget is per pixel)."""
    if "eps_l2" not in row:
        return ""
    return f"<br><small>L2 radius {row['eps_l2']:.3g} at {' x '.join(map(str, row['input_size']))}</small>"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def gallery_pairs(
    record: dict[str, Any], gallery: dict[str, dict[str, str]], original: Callable[[int], bytes]
) -> list[tuple[str, str, str, str]]:
    """(file, threat, original PNG b64, adversarial PNG b64) for the fakes flipped at the smallest budget (L-inf
    first, then L2)."""
    curve = [
        r
        for name, (budget, _, _) in CURVES.items()
        for r in sorted((r for r in record["threats"] if r["name"] == name), key=lambda r: r["params"][budget])
    ]
    out: list[tuple[str, str, str, str]] = []
    for r in curve:
        for index, png in sorted(gallery.get(r["id"], {}).items(), key=lambda kv: int(kv[0])):
            if len(out) == GALLERY_SIZE:
                return out
            if any(o[0] == record["per_image"][int(index)]["file"] for o in out):
                continue
            file = record["per_image"][int(index)]["file"]
            out.append((file, r["id"], base64.b64encode(original(int(index))).decode(), png))
    return out


def render_html(record: dict[str, Any], pairs: list[tuple[str, str, str, str]]) -> str:
    e = html.escape
    curves = [eps_curve(record, name) for name in CURVES]
    figures = [f for f in (*curves, laundering_bars(record), roc_figure(record)) if f]
    rows = "".join(
        f"<tr><td>{e(r['family'])}</td><td><code>{e(r['id'])}</code>{_radius(r)}</td>"
        f"<td>{_pct(r['metrics']['evasion'])}</td>"
        f"<td>{_pct(r['metrics']['false_alarms'])}</td><td>{_pct(r['metrics']['accuracy'])}</td>"
        f"<td>{_number(r['metrics'].get('auroc'))}</td></tr>"
        for r in record["threats"]
        if r["family"] != "sanity"
    )
    flags = record["sanity"]["flags"]
    flag_items = "".join(f"<li><b>{e(f['flag'])}</b>: {e(f['reason'])}</li>" for f in flags) or "<li>none raised</li>"
    pictures = "".join(
        f"<figure><img alt='original' src='data:image/png;base64,{o}'><img alt='adversarial' "
        f"src='data:image/png;base64,{a}'><figcaption>{e(f)}<br><code>{e(t)}</code></figcaption></figure>"
        for f, t, o, a in pairs
    )
    clean = next(r for r in record["threats"] if r["name"] == "clean")["metrics"]
    detector = record["detector"]
    images = "".join(f"<img alt='figure' src='data:image/png;base64,{f}'>" for f in figures)
    budgets = "".join(f"<li><code>{e(r['id'])}</code>: {e(r['description'])}</li>" for r in record["threats"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Robustness audit: {e(record["name"])}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222 }}
h1 {{ font-size: 1.5em }} .summary {{ font-size: 1.1em; background: #f4f6fa; padding: .8em 1em; border-radius: 6px }}
table {{ border-collapse: collapse; width: 100% }} td, th {{ border-bottom: 1px solid #ddd; padding: .3em .5em;
text-align: left; font-size: .9em }} .unreliable {{ color: #a00; font-weight: bold }}
.figs img {{ max-width: 100%; margin: .5em 0 }} figure {{ display: inline-block; margin: .4em; text-align: center }}
figure img {{ width: 128px; image-rendering: pixelated; margin: 2px }} small {{ color: #666 }}
</style></head><body>
<h1>Robustness audit of <code>{e(record["name"])}</code></h1>
<p class="summary">{e(record["summary"])}</p>
<p>Operating threshold {record["threshold"]:.4g} ({e(record["threshold_source"])}); {record["data"]["n_fake"]} fakes and
{record["data"]["n_real"]} reals from <code>{e(record["data"]["folder"])}</code>; profile
<code>{e(str((record.get("profile") or {}).get("name")))}</code>; seed {record["seed"]}. Clean AUROC
{"n/a" if clean["auroc"] is None else f"{clean['auroc']:.3f}"}{
        "" if not clean.get("auroc_ci95") else f" [{clean['auroc_ci95'][0]:.3f}, {clean['auroc_ci95'][1]:.3f}]"
    }, EER
{"n/a" if clean["eer"] is None else f"{100 * clean['eer']:.1f} %"}.
{'<span class="unreliable">Unreliable: see the sanity flags.</span>' if record["unreliable"] else ""}</p>
<h2>Sanity flags</h2><ul>{flag_items}</ul>
<h2>Every threat</h2>
<table><tr><th>family</th><th>threat</th><th>fakes passed as real</th><th>reals flagged fake</th><th>accuracy</th>
<th>AUROC</th></tr>{rows}</table>
<h2>Figures</h2><div class="figs">{images}</div>
<h2>Smallest successful adversarial fakes</h2>
<p>Each pair: the fake as the detector sees it, and the delivered 8-bit file that it passed as real.</p>
<div>{pictures or "<p>No fake was flipped.</p>"}</div>
<h2>Budgets and seeds</h2><ul>{budgets}</ul>
<p><small>Detector {e(json.dumps(detector))}. Environment {e(json.dumps(record.get("environment", {})))}.</small></p>
</body></html>
"""


def write_csv(record: dict[str, Any], path: Path) -> None:
    ids = [r["id"] for r in record["threats"] if r["family"] != "sanity"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", *ids])
        for img in record["per_image"]:
            writer.writerow([img["file"], img["label"], *(f"{img['p_fake'][i]:.6g}" for i in ids)])


def gallery_of(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The report's gallery (threat id -> image position -> PNG base64) from the shards' results."""
    gallery: dict[str, dict[str, str]] = {}
    for key, result in results.items():
        if result["gallery"]:
            gallery.setdefault(key.rsplit("@", 1)[0], {}).update(result["gallery"])
    return gallery


def write_all(
    record: dict[str, Any], gallery: dict[str, dict[str, str]], original: Callable[[int], bytes], out: Path
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html", "csv": out / "per_image.csv"}
    paths["json"].write_text(json.dumps(record, indent=1) + "\n")
    paths["html"].write_text(render_html(record, gallery_pairs(record, gallery, original)))
    write_csv(record, paths["csv"])
    return paths
