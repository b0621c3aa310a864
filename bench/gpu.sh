#!/usr/bin/env bash
# The GPU benchmark suite on a lent H100/H200 (its python3 has torch, transformers and the rest;
# nothing can be fetched there). The whole suite in one device call (sized for its 10-minute
# limit), or one part per call with more repetitions:
#   run(command="bash bench/gpu.sh")          # all of it: both 7B configurations, 1 repetition
#   run(command="bash bench/gpu.sh qwen")     # Qwen2.5-VL-7B language model (GQA 28/4), bf16
#   run(command="bash bench/gpu.sh llava")    # LLaVA-NeXT-Video-7B-like (MHA 32/32), bf16
#   run(command="bash bench/gpu.sh prune")    # pruning overhead at 7B width
#   run(command="bash bench/gpu.sh qwen3")    # Qwen3-VL-8B (GQA 32/8, DeepStack), bf16
#   run(command="bash bench/gpu.sh qwen3.5")  # a ~9B Qwen3.5 (8 full-attention + 24 linear-attention layers)
#   run(command="bash bench/gpu.sh new")      # both of those, 1 repetition (one call)
#   run(command="bash bench/gpu.sh reduction") # reduction before the LLM (evs, vidcom2): Qwen2-VL-2B size, 448 px
#   run(command="bash bench/gpu.sh qwen 1")   # a part with another number of repetitions
# The linear-attention layers run the library's PyTorch fallback unless flash-linear-attention and
# causal-conv1d are installed in the image (the report's log says which).
# Results come back under $OUT; copy them to bench/results/ and docs/benchmarks/.
set -euo pipefail
OUT=${OUT:-/tmp/videoqa-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The project itself, without dependencies (they are in the image), importable as `videoqa`.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$OUT/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt"
decode() {  # decode MODEL REPS
  python3 bench/decode.py --device cuda:0 --dtype bfloat16 --model "$1" --frames 16,32,64 \
    --concurrency 1,4,8,16 --reps "${2:-2}" --steps 16 --kv-budget-gib 40 \
    --json "$OUT/decode_$1.json" --markdown "$OUT/decode_$1.md" --plots "$OUT/plots" 2>&1 | tee "$OUT/decode_$1.log"
}
prune() {  # prune REPS
  python3 bench/prune_overhead.py --device cuda:0 --dtype bfloat16 --spec 28,3584,28,4,18944 --reps "$1" \
    --json "$OUT/prune_overhead_gpu.json" --markdown "$OUT/prune_overhead_gpu.md" 2>&1 | tee "$OUT/prune.log"
}
reduction() {  # reduction REPS: the 28-layer Qwen2-VL-2B language model, a vision tower of its width and depth
  python3 bench/reduction.py --device cuda:0 --dtype bfloat16 --spec 28,1536,12,2,8960 --vision 1280,32 \
    --size 448 --frames 32,64,256 --reps "$1" \
    --json "$OUT/reduction_gpu.json" --markdown "$OUT/reduction_gpu.md" 2>&1 | tee "$OUT/reduction.log"
}
case "${1:-all}" in
  all) decode qwen2.5-vl-7b 1 && decode llava-video-7b 1 && prune 3 ;;
  qwen) decode qwen2.5-vl-7b "${2:-2}" ;;
  llava) decode llava-video-7b "${2:-2}" ;;
  prune) prune "${2:-5}" ;;
  qwen3) decode qwen3-vl-8b "${2:-2}" ;;
  qwen3.5) decode qwen3.5-9b "${2:-2}" ;;
  new) decode qwen3-vl-8b 1 && decode qwen3.5-9b 1 ;;
  reduction) reduction "${2:-5}" ;;
  *) echo "usage: bash bench/gpu.sh [all|qwen|llava|prune|qwen3|qwen3.5|new|reduction] [REPS]" >&2; exit 2 ;;
esac
