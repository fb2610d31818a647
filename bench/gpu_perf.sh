#!/usr/bin/env bash
# Device script for issue 14's GPU goals, one stage per call (each fits one device command):
#   bash bench/gpu_perf.sh throughput   goals 1-4: bench_gpu_throughput.py, six lines, about 5 minutes
#   bash bench/gpu_perf.sh race         goal 5: race_nanogpt_gpu.py, APT vs nanoGPT's train.py, about 6 minutes
#   bash bench/gpu_perf.sh race8        goal 8 on the GPU: APT autopoietic vs APT SDPA in the same time
# (the CUDA tests: `bash bench/gpu_check.sh tests`)
# Prepared here first with `bash bench/gpu_prepare.sh` (wheels in .whl/, nanoGPT and input.txt in
# .gpu-data/; carry .whl and .gpu-data). Results go to $OUT (or /tmp/out).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/out}
mkdir -p "$out"
plugins="lm trainer"
. bench/gpu_install.sh
data=.gpu-data/input.txt
[ -f "$data" ] || data=../shared/data/tinyshakespeare/input.txt
case "${1:-throughput}" in
  throughput) python3 bench/bench_gpu_throughput.py --json "$out/throughput.json" 2>&1 | tee "$out/throughput.log" ;;
  race) python3 bench/race_nanogpt_gpu.py --nanogpt .gpu-data/nanoGPT --data "$data" 2>&1 | tee "$out/race.log" ;;
  race8) python3 bench/race_nanogpt_gpu.py --only apt --attention-race --data "$data" 2>&1 | tee "$out/race8.log" ;;
  *) echo "stages: throughput, race, race8" >&2; exit 2 ;;
esac
