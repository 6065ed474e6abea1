"""/detect serving path: dynamic micro-batching against the raw model, measured side by side.

Measures (torch alone; runs on CPU or CUDA):
  raw      images/s of the bare backbone at --batch (bf16 autocast on CUDA, fp32 on CPU)
  service  images/s when --concurrency clients each send single images through the same path
           /detect uses (per-image resize+normalise, then models.microbatch.MicroBatcher)
  latency  p50/p95 of one lone request through that path, against one batch-1 forward

Targets (docs/PERFORMANCE.md): service >= 70% of raw on GPU; on CPU lone-request p50 <= 1.5 x forward.
Usage: python bench/detect.py [--device cuda] [--arch resnet50 --size 224] [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchio import save_report

from models import registry
from models.checkpoint import CheckpointMeta, LoadedCheckpoint
from models.devices import resolve_device
from models.microbatch import MicroBatcher


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(arch: str, size: int, device: torch.device) -> LoadedCheckpoint:
    spec = registry.get(arch)
    det = spec.build(input_size=(size, size)).eval().to(device)
    if device.type == "cuda":
        det = det.to(memory_format=torch.channels_last)
    meta = CheckpointMeta(architecture=arch, input_size=(size, size), mean=spec.mean, std=spec.std)
    return LoadedCheckpoint(name=arch, detector=det, meta=meta, sha256="0" * 64, path=Path(arch))


def raw_throughput(loaded: LoadedCheckpoint, batch: int, size: int, device: torch.device, seconds: float) -> float:
    x = torch.rand(batch, 3, size, size, device=device)
    x = loaded.detector.preprocess(x)
    use_bf16 = device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
        for _ in range(3):
            loaded.detector.classify(x)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            loaded.detector.classify(x).float().softmax(1)[:, 0].cpu()
            n += batch
        sync(device)
    return n / (time.perf_counter() - t0)


def one_request(loaded: LoadedCheckpoint, batcher: MicroBatcher, image: torch.Tensor) -> float:
    with torch.inference_mode():
        prepared = loaded.detector.preprocess(image)
    return batcher.submit(loaded, prepared).result()[0]


def service_throughput(
    loaded: LoadedCheckpoint, batcher: MicroBatcher, size: int, device: torch.device, concurrency: int, seconds: float
) -> tuple[float, float]:
    images = [torch.rand(1, 3, size, size, device=device) for _ in range(concurrency)]
    for im in images[:4]:
        one_request(loaded, batcher, im)
    stop = threading.Event()
    counts = [0] * concurrency

    def client(i: int) -> None:
        while not stop.is_set():
            one_request(loaded, batcher, images[i])
            counts[i] += 1

    before_batches, before_images = batcher.batches_run, batcher.images_run
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    batches = batcher.batches_run - before_batches
    mean_batch = (batcher.images_run - before_images) / max(1, batches)
    return sum(counts) / elapsed, mean_batch


def latency(
    loaded: LoadedCheckpoint, batcher: MicroBatcher, size: int, device: torch.device, n: int
) -> tuple[float, float, float]:
    image = torch.rand(1, 3, size, size, device=device)
    x = loaded.detector.preprocess(image)
    fwd, req = [], []
    with torch.inference_mode():
        for _ in range(5):
            loaded.detector.classify(x)
            one_request(loaded, batcher, image)
        for _ in range(n):
            sync(device)
            t0 = time.perf_counter()
            loaded.detector.classify(x).softmax(1)[:, 0].cpu()
            fwd.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            one_request(loaded, batcher, image)
            req.append(time.perf_counter() - t0)
    q = statistics.quantiles(req, n=20)
    return statistics.median(fwd) * 1e3, statistics.median(req) * 1e3, q[18] * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--arch", default=None, help="registry architecture (default: resnet50 on CUDA, resnet18 on CPU)")
    ap.add_argument(
        "--size", type=int, default=None, help="input side (default: 224 on CUDA, 64 on CPU = demo detectors)"
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=None, help="clients (default: 2 x batch on CUDA, 8 on CPU)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    arch = args.arch or ("resnet50" if cuda else "resnet18")
    size = args.size or (224 if cuda else 64)
    concurrency = args.concurrency or (2 * args.batch if cuda else 8)
    seconds = args.seconds or (5.0 if cuda else 4.0)
    torch.backends.cudnn.benchmark = True
    loaded = build(arch, size, device)
    batcher = MicroBatcher(lock=threading.Lock(), max_batch=args.batch, precision="bf16" if cuda else "fp32")
    raw = raw_throughput(loaded, args.batch, size, device, seconds)
    service, mean_batch = service_throughput(loaded, batcher, size, device, concurrency, seconds)
    fwd_ms, p50_ms, p95_ms = latency(loaded, batcher, size, device, 50 if cuda else 30)
    batcher.close()
    out = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arch": arch,
        "size": size,
        "batch": args.batch,
        "precision": "bf16" if cuda else "fp32",
        "concurrency": concurrency,
        "raw_images_per_s": raw,
        "service_images_per_s": service,
        "service_mean_batch": mean_batch,
        "service_over_raw": service / raw,
        "forward_batch1_ms": fwd_ms,
        "lone_request_p50_ms": p50_ms,
        "lone_request_p95_ms": p95_ms,
        "p50_over_forward": p50_ms / fwd_ms,
    }
    print(f"device {out['device']}  torch {out['torch']}  {arch} @ {size}px  {out['precision']}")
    print(f"{'raw model, batch ' + str(args.batch):<32}{raw:>10.1f} img/s")
    ratio_s, ratio_l = service / raw, p50_ms / fwd_ms
    label = f"service, {concurrency} clients"
    print(f"{label:<32}{service:>10.1f} img/s  (mean batch {mean_batch:.1f})  ratio {ratio_s:.2f}  target >= 0.70")
    print(f"{'forward, batch 1':<32}{fwd_ms:>10.2f} ms")
    print(f"{'lone request p50 / p95':<32}{p50_ms:>10.2f} ms / {p95_ms:.2f} ms  ratio {ratio_l:.2f}  target <= 1.5")
    save_report(args.json, out, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
