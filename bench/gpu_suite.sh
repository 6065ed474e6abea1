#!/usr/bin/env bash
# Every GPU measurement of issues 3, 4 and 6 in one run (expected 5-7 minutes on an H100/H200). Each step has a
# time limit; the limits sum to 475 s, so the suite ends within 8 minutes even if every step hits its limit.
# It needs torch, torchvision, numpy, pillow and safetensors, no service package (tests/test_bench.py runs each
# script with those made unimportable). Every script rewrites its JSON after each row, so a step stopped at its
# limit keeps what it measured (the summary marks it "partial").
# Usage: bash bench/gpu_suite.sh [OUT_DIR]      (OUT_DIR defaults to runs/gpu-suite)
#        SUITE_SMOKE=1 bash bench/gpu_suite.sh OUT  the same steps on CPU at toy sizes (SUITE_DATA: the test split)
# The demo detectors come from models/demo_checkpoints/; data/demo/test is needed only for the restoration step
# (make it with `deepfake-guard make-demo-data data/demo`, or carry it to the GPU machine). Wheels in .whl/
# (e.g. torchattacks for the peer column: `pip download --no-deps -d .whl torchattacks==3.5.1`) are installed
# into a scratch folder first, so a machine with torch alone and no network can run the whole suite.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu-suite}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
status=0
run() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  if ! timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"; then
    echo "!!! $name failed or timed out"; status=1
  fi
}
if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --target /tmp/dfg-site .whl/*.whl && export PYTHONPATH="/tmp/dfg-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "${SUITE_SMOKE:-0}" = 1 ]; then
  # The same steps on CPU at toy sizes, to check the plumbing before a one-shot GPU try (tests/test_bench.py).
  dev=cpu size=32 sweep="--iterations 8 --batch 1 2" presets="early" atk="--batch 2 --cw-iters 2 --loop-images 1"
  atk224="--size 32 --batch 2 --cw-iters 2 --loop-images 1" det="--seconds 0.3 --concurrency 2 --arch resnet18 --size 32"
  rest="--n 2 --paper-iterations 6 --default-max-iterations 6 --curve 2 --methods paper default jpeg"
else
  dev=cuda size=512 sweep="--iterations 150 --batch 1 8 32" presets="early default" atk="--batch 32 --cw-iters 200"
  atk224="--size 224 --batch 32 --cw-iters 100 --loop-images 4" det="--seconds 4"
  rest="--n 60 --curve 250 --methods paper default early early-bf16 jpeg median bitdepth"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

# Issue 3/6: one 512 x 512 image end to end with the fast engine (early, then default preset; the paper preset's
# time follows from the sweep's steady ms/step), then every engine configuration side by side with the eager
# reference at 1, 8 and 32 images per launch. Separate steps, so a slow sweep cannot cost the latency figures.
run purify-latency 45 $py bench/purify.py --device $dev --size $size --latency fast --latency-only --latency-presets $presets --json "$out/purify-latency.json"
run purify 135 $py bench/purify.py --device $dev --size $size $sweep --json "$out/purify.json"
# Issue 4/6: attacks, batched vs batch-1 loop vs torchattacks (column skipped when it is not installed).
run attacks 60 $py bench/attacks.py --device $dev $atk --json "$out/attacks.json"
# The issue-6 configuration: ResNet-50 and VGG-16 at 224 px (random weights: speed does not depend on them).
run attacks-224 100 $py bench/attacks.py --device $dev $atk224 --arch resnet50 vgg16 --json "$out/attacks-224.json"
# Issue 6: /detect micro-batching vs the raw bf16 model at batch 64 (ResNet-50, 224 px).
run detect 40 $py bench/detect.py --device $dev $det --json "$out/detect.json"
# Issue 3/6: restoration of FGSM-fooled demo fakes by DIP: the paper preset (6,000 fixed steps) is the quality
# bar for the default (auto stop) and early (1,000 fixed) presets, the latter in fp32 and bf16.
data="${SUITE_DATA:-data/demo/test}"
if [ -d "$data" ]; then
  run restoration 95 $py bench/restoration.py --device $dev --data "$data" $rest --json "$out/restoration.json"
else
  echo "=== restoration skipped: $data is missing"
fi
echo "=== issue 6 targets"
$py bench/summary.py "$out" | tee "$out/summary.txt"
echo "results in $out"
exit $status
