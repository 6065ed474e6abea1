"""The evaluation harness behind ``deepfake-guard evaluate``: the paper's tables from our detectors.

R1 clean detection (``clean``), R2 attacks white-/black-box with honest delivery (``attacks``), R3 Lipschitz-
regularised detectors (``sweep`` trains them), R4 DIP purification by category (``dip``); ``run.evaluate``
ties them into one results dict, ``report`` writes markdown/JSON and ``figures`` PNGs (matplotlib, lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.evaluation.config import FULL, PRESETS, QUICK, EvalConfig
from models.evaluation.report import render_markdown, write_json
from models.evaluation.run import evaluate


def write_outputs(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``report.md``, ``results.json`` and the PNG figures into ``out_dir``; returns their paths."""
    from models.evaluation.figures import write_figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(results, out)
    if results.get("roc_figure"):  # drawn by the run itself, from the scores it had (models/evaluation/run.py)
        figures.append(Path(results["roc_figure"]))
    results["figures"] = [p.name for p in figures]
    paths = {"report": out / "report.md", "results": out / "results.json"}
    paths["report"].write_text(render_markdown(results))
    write_json(results, paths["results"])
    return {**paths, **{p.stem: p for p in figures}}


__all__ = ["FULL", "PRESETS", "QUICK", "EvalConfig", "evaluate", "render_markdown", "write_json", "write_outputs"]
