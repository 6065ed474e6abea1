"""Writing a bench report so that a run cut short still leaves what it measured.

bench/gpu_suite.sh gives every step a time limit; a script killed at its limit must not lose the rows it had
finished, so each script rewrites its JSON after every row (marked ``"complete": false`` until the end).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def save_report(path: Path | None, report: dict[str, Any], *, complete: bool) -> None:
    """Write ``report`` to ``path`` atomically (a reader never sees half a file); no-op without a path."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    scratch.write_text(json.dumps({**report, "complete": complete}, indent=2, default=str) + "\n")
    os.replace(scratch, path)
