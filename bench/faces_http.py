"""The latency crop=faces adds to /detect over real HTTP, beside the detector's own forward pass, in one run.

Starts the API (uvicorn on loopback, a random-weight checkpoint of --arch in a scratch folder) and times, median
of --repeats, on a 1024 x 1024 photo (scikit-image's astronaut, upscaled; one face) sent as PNG:
  http_whole      POST /detect (crop=none): upload, decode, resize inside the detector, one forward
  http_faces      POST /detect crop=faces: the same plus dlib face detection and the face crop
  forward         one batch-1 forward pass at the input size, in this process
  dlib_upsample1  models.faces.detect_faces on the photo, in this process
The two HTTP rows alternate request by request, so load on the machine falls on both alike. Needs the service's
dependencies (it is the service); bench/faces.py has the model-level rows for a GPU host without them.

    OMP_NUM_THREADS=1 python bench/faces_http.py --json out/bench-faces-http.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchio import save_report
from faces import median_ms, photo

from models import checkpoint, faces, registry
from models.checkpoint import CheckpointMeta
from models.images import encode_png

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(folder: Path, name: str, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update({"DFG_CHECKPOINTS_DIR": str(folder), "DFG_DEFAULT_MODEL": name, "DFG_DEVICE": "cpu",
                "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "DFG_LOG_LEVEL": "warning"})  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise TimeoutError("the API did not start within 120 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="registry architecture (torchvision:NAME, timm:NAME too)")
    ap.add_argument("--size", type=int, default=224, help="detector input side")
    ap.add_argument("--photo", type=int, default=1024, help="photo side")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    spec = registry.get(args.arch)
    detector = spec.build(input_size=(args.size, args.size)).eval()
    image = photo(args.photo)
    upload = encode_png(image)
    threads = torch.get_num_threads()
    report: dict[str, Any] = {
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": threads,
        "arch": args.arch,
        "size": args.size,
        "photo": [args.photo, args.photo],
        "upload_bytes": len(upload),
        "rows_ms": {},
    }
    rows: dict[str, float] = report["rows_ms"]
    at_input = torch.rand(1, 3, args.size, args.size)

    def forward() -> None:
        with torch.inference_mode():
            detector(at_input).softmax(1)

    rows["forward_at_input"] = median_ms(forward, args.repeats, torch.device("cpu"))
    rows["dlib_upsample1"] = median_ms(lambda: faces.detect_faces(image), args.repeats, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        meta = CheckpointMeta(architecture=spec.name, input_size=(args.size, args.size), mean=spec.mean, std=spec.std)
        checkpoint.save(detector, Path(tmp) / "bench", meta)
        proc, base = start_api(Path(tmp), "bench", threads)
        try:
            times: dict[str, list[float]] = {"http_whole": [], "http_faces": []}
            with httpx.Client(base_url=base, timeout=120) as http:
                for i in range(args.repeats + 1):
                    for row, crop in (("http_whole", "none"), ("http_faces", "faces")):
                        t0 = time.perf_counter()
                        resp = http.post("/detect", files={"file": ("p.png", upload)}, data={"crop": crop})
                        elapsed = time.perf_counter() - t0
                        resp.raise_for_status()
                        if i:  # the first round warms up both paths
                            times[row].append(elapsed)
                        if crop == "faces":
                            report["faces"] = resp.json()["results"][0]["faces"]
        finally:
            proc.terminate()
            proc.wait(10)
    for row, values in times.items():
        rows[row] = statistics.median(values) * 1e3
    for name, value in rows.items():
        print(f"{name:<20}{value:>10.2f} ms")
    report["http_crop_faces_added_ms"] = rows["http_faces"] - rows["http_whole"]
    report["added_over_forward"] = report["http_crop_faces_added_ms"] / rows["forward_at_input"]
    report["added_over_dlib"] = report["http_crop_faces_added_ms"] / rows["dlib_upsample1"]
    print(
        f"crop=faces adds {report['http_crop_faces_added_ms']:.1f} ms to /detect over HTTP "
        f"({report['added_over_forward']:.1f}x one forward pass, {report['added_over_dlib']:.2f}x dlib alone)"
    )
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
