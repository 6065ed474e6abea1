"""Face detection beside the detector's own forward pass, measured side by side in one run.

On a 1024 x 1024 photo (scikit-image's astronaut, upscaled; one face) it times, median of --repeats:
  dlib up0 / up1   models.faces.detect_faces with dlib upsample 0 and 1 (1 is the default, FaceForensics++'s)
  haar             OpenCV's frontal Haar cascade (only when opencv is installed; not a project dependency)
  forward          one batch-1 forward pass of the detector at its input size
  whole photo      the path /detect takes without crop: the photo resized inside the detector, one forward
  crop=faces       the path with crop=faces: detect_faces, each face cropped to the input size, one forward
and reports crop=faces over the whole-photo path: the latency crop=faces adds at the model level (the
HTTP figure is bench/detect.py's to take once /detect has crop). Face detection runs on the CPU (dlib has no
GPU build in the wheel) whatever --device the detector uses. Needs torch, torchvision, scikit-image and
dlib-bin; never imports app/.

    python bench/faces.py                                   # resnet18 at 224 px, CPU
    python bench/faces.py --arch torchvision:efficientnet_b0 --size 224 --json out/bench-faces.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import faces, registry
from models.devices import resolve_device


def photo(side: int) -> torch.Tensor:
    from skimage import data

    x = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255)
    return F.interpolate(x[None], size=(side, side), mode="bilinear", antialias=True)[0].clamp(0, 1)


def median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: first-use allocations, dlib's detector construction
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def haar(image: torch.Tensor) -> Callable[[], Any] | None:
    try:
        import cv2
    except ImportError:
        return None
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(faces._uint8_hwc(image), cv2.COLOR_RGB2GRAY)
    return lambda: cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="resnet18", help="registry architecture (torchvision:NAME, timm:NAME too)")
    ap.add_argument("--size", type=int, default=224, help="detector input side")
    ap.add_argument("--photo", type=int, default=1024, help="photo side")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    detector = registry.get(args.arch).build(input_size=(args.size, args.size)).eval().to(device)
    image = photo(args.photo)
    found = faces.detect_faces(image)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "size": args.size,
        "photo": [args.photo, args.photo],
        "faces": [b.as_list() for b in found],
        # every detection dlib makes down to a score of -1, kept faces or not: why a face was missed
        "scores": [round(b.score, 3) for b in faces.detect_faces(image, min_score=-1.0)],
        "rows_ms": {},
    }
    rows: dict[str, float] = report["rows_ms"]

    def whole() -> None:
        with torch.inference_mode():
            detector(image[None].to(device)).softmax(1).cpu()

    def cropped() -> None:
        boxes = faces.detect_faces(image)
        if boxes:
            batch = torch.stack([faces.crop(image, b, detector.fitting) for b in boxes])
            with torch.inference_mode():
                detector(batch.to(device)).softmax(1).cpu()

    at_input = torch.rand(1, 3, args.size, args.size, device=device)

    def forward() -> None:
        with torch.inference_mode():
            detector(at_input).softmax(1).cpu()

    steps: list[tuple[str, Callable[[], Any] | None, torch.device]] = [
        ("dlib_upsample0", lambda: faces.detect_faces(image, upsample=0), torch.device("cpu")),
        ("dlib_upsample1", lambda: faces.detect_faces(image, upsample=1), torch.device("cpu")),
        ("haar_opencv", haar(image), torch.device("cpu")),
        ("forward_at_input", forward, device),
        ("whole_photo", whole, device),
        ("crop_faces", cropped, device),
    ]
    for name, fn, dev in steps:
        if fn is None:
            continue
        rows[name] = median_ms(fn, args.repeats, dev)
        print(f"{name:<20}{rows[name]:>10.2f} ms")
        save_report(args.json, report, complete=False)
    report["crop_faces_added_ms"] = rows["crop_faces"] - rows["whole_photo"]
    report["crop_faces_over_whole_photo"] = rows["crop_faces"] / rows["whole_photo"]
    report["dlib_upsample1_over_forward"] = rows["dlib_upsample1"] / rows["forward_at_input"]
    print(
        f"crop=faces adds {report['crop_faces_added_ms']:.1f} ms ({report['crop_faces_over_whole_photo']:.2f}x the "
        f"whole-photo path); face detection is {report['dlib_upsample1_over_forward']:.1f}x one forward pass"
    )
    save_report(args.json, report, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
