"""``deepfake-guard audit NAME DATA --queue URL``: the audit sent to a running service, whose workers share its shards
(docs/AUDIT.md, "As a service job"): DATA zipped, POST /audits, a progress bar while GET /audits/{id} polls, then
the same three files as an in-process audit written into --out."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from models.data.folder import IMAGE_EXTENSIONS
from models.detector import CLASS_NAMES

#: Seconds between two polls of the audit's status.
POLL_S = 1.0


class ServiceError(Exception):
    """The service refused or failed the audit; the message is its problem+json detail."""


def zip_folder(data: Path) -> bytes:
    """DATA's images under fake/ and real/, in a zip whose one top folder is DATA's name (the record's data set)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:  # images hardly compress
        for label in CLASS_NAMES:
            for path in sorted((data / label).rglob("*")) if (data / label).is_dir() else []:
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    z.write(path, f"{data.name}/{path.relative_to(data).as_posix()}")
    return buf.getvalue()


def _check(resp: httpx.Response, ok: tuple[int, ...] = (200,)) -> httpx.Response:
    if resp.status_code not in ok:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise ServiceError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {detail}")
    return resp


def form_value(value: Any) -> str:
    """A value as the service's form reads it: numbers as Python writes them, booleans as true / false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def run_remote(
    url: str, model: str, data: Path, out: Path, *, profile: str, eps: list[float] | None, threshold: float | None,
    api_key: str | None, transfer_from: Sequence[str] = (), defense: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (), seed: int = 0, timeout_s: float = 60.0, l2_rms: list[float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run the audit on the service at ``url``; the finished record (also written into ``out``). ``transfer_from``
    names the service's detectors, ``defense`` holds POST /audits' defence fields, ``overrides`` the ``set`` items
    (``THREAT.PARAM=VALUE``)."""
    from tqdm import tqdm

    if not any((data / c).is_dir() for c in CLASS_NAMES):
        raise ValueError(f"{data} needs a fake/ or a real/ folder of images")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    form: dict[str, Any] = {"profile": profile, "seed": str(seed)}
    if model:
        form["model"] = model
    if eps:
        form["eps"] = [repr(e) for e in eps]
    if l2_rms:
        form["l2_rms"] = [repr(e) for e in l2_rms]
    if threshold is not None:
        form["threshold"] = repr(threshold)
    if transfer_from:
        form["transfer_from"] = list(transfer_from)
    if overrides:
        form["set"] = list(overrides)
    form.update({k: form_value(v) for k, v in (defense or {}).items()})
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s) as client:
        body = zip_folder(data)
        files = {"file": (f"{data.name}.zip", body, "application/zip")}
        accepted = _check(client.post("/audits", data=form, files=files), (202,)).json()
        location = accepted["location"]
        with tqdm(total=accepted["shards"], desc=f"audit {accepted['id'][:8]}", unit="shard") as bar:
            while True:
                info = _check(client.get(location)).json()
                bar.update(info["done"] - bar.n)
                if info["status"] in ("failed", "stopped"):
                    raise ServiceError(f"the audit {info['status']}: {info.get('error')}")
                if info["status"] == "finished":
                    break
                time.sleep(POLL_S)
        out.mkdir(parents=True, exist_ok=True)
        for name, link in info["reports"].items():
            (out / name).write_bytes(_check(client.get(link)).content)
    record: dict[str, Any] = json.loads((out / "report.json").read_text())
    return record
