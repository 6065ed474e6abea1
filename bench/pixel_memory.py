"""Bytes of API memory per decoded pixel: the peak resident memory (VmHWM) of a fresh uvicorn process grows by how
much while it answers one /detect of a large image? The figure behind DFG_MAX_PIXELS_IN_FLIGHT (README, "~40 bytes").
One process per image, so that an earlier peak does not hide a later one. Linux only (reads /proc).

    python bench/pixel_memory.py --images JPEG:2000x1500 JPEG:6000x4000 PNG:4000x3000 PNG:6000x4000
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import DEMO_CHECKPOINTS  # noqa: E402


def peak_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def encode(fmt: str, width: int, height: int) -> bytes:
    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def measure(fmt: str, width: int, height: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update(DFG_CHECKPOINTS_DIR=str(DEMO_CHECKPOINTS), DFG_DEVICE="cpu", DFG_MAX_PIXELS=str(width * height),
               DFG_MAX_UPLOAD_BYTES=str(256 << 20))  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        warm = httpx.post(f"{base}/detect", files={"file": ("w.png", encode("PNG", 64, 64))}, timeout=60)
        warm.raise_for_status()
        data = encode(fmt, width, height)
        before = peak_bytes(proc.pid)
        resp = httpx.post(f"{base}/detect", files={"file": (f"x.{fmt.lower()}", data)}, timeout=600)
        resp.raise_for_status()
        return (peak_bytes(proc.pid) - before) / (width * height)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="+", default=["JPEG:2000x1500", "JPEG:6000x4000", "PNG:6000x4000"])
    args = parser.parse_args()
    for spec in args.images:
        fmt, size = spec.split(":")
        width, height = (int(v) for v in size.split("x"))
        print(f"{fmt} {width} x {height}: {measure(fmt, width, height):.1f} bytes per decoded pixel")


if __name__ == "__main__":
    main()
