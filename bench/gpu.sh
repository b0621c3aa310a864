#!/usr/bin/env bash
# The GPU benchmark suite in one call of the device tool (an H100/H200 machine whose python3 has
# torch, transformers and the rest; nothing can be fetched there). From this machine:
#   run(command="bash bench/gpu.sh", timeout_s=600)
# Results come back under $OUT; copy them to bench/results/ and docs/benchmarks/.
set -euo pipefail
OUT=${OUT:-/tmp/videoqa-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The project itself, without dependencies (they are in the image), importable as `videoqa`.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt"
python3 bench/decode.py --device cuda:0 --dtype bfloat16 --model qwen2.5-vl-7b --model llava-video-7b \
  --frames 16,32,64 --concurrency 1,4,8,16 --reps 3 --steps 32 --kv-budget-gib 40 \
  --json "$OUT/decode_gpu.json" --markdown "$OUT/decode_gpu.md" --plots "$OUT/plots" 2>&1 | tee "$OUT/decode.log"
python3 bench/prune_overhead.py --device cuda:0 --dtype bfloat16 --spec 28,3584,28,4,18944 --reps 5 \
  --json "$OUT/prune_overhead_gpu.json" --markdown "$OUT/prune_overhead_gpu.md" 2>&1 | tee "$OUT/prune.log"
