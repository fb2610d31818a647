#!/usr/bin/env bash
# Device script: the full configurations of the three image tasks of the multimodal plugin, side by
# side on one GPU (each is far too small to fill it), bf16, each stopped after a wall-time budget.
# The digits manifests travel prepared in .gpu-data/digits (the machine has no scikit-learn);
# Sort-of-CLEVR is generated there. Wheels for missing packages travel in .whl/ (bench/README.md).
#   run: bash bench/gpu_multimodal.sh [minutes for VQA and captions, default 5]
set -uo pipefail
export PYTHONUNBUFFERED=1
minutes=${1:-5}
plugins="lm trainer vision audio multimodal"
. bench/gpu_install.sh
repo=$PWD
out=${OUT:-/tmp/out}
mkdir -p /tmp/mm/data "$out" && cp -r .gpu-data/digits /tmp/mm/data/digits && cd /tmp/mm || exit 1
start=$(date +%s)
python3 -m apt_kernel.cli multimodal prepare sort-of-clevr --out data/sort-of-clevr --train-images 10000 --test-images 500
echo "prepared in $(( $(date +%s) - start )) s"
gpu="--no-progress --set trainer.device=cuda --set trainer.precision=bf16"
# shellcheck disable=SC2086
python3 -m apt_kernel.cli run "$repo/pipelines/multimodal-digits.toml" $gpu --set data.num_workers=3 --set trainer.max_time_minutes="$minutes" > "$out/digits.log" 2>&1 &
# shellcheck disable=SC2086
python3 -m apt_kernel.cli run "$repo/pipelines/multimodal-sort-of-clevr.toml" $gpu --set data.num_workers=4 \
  --set trainer.max_time_minutes="$minutes" > "$out/sort-of-clevr.log" 2>&1 &
# shellcheck disable=SC2086
python3 -m apt_kernel.cli run "$repo/pipelines/multimodal-captions.toml" $gpu --set data.num_workers=4 \
  --set trainer.max_time_minutes="$minutes" > "$out/captions.log" 2>&1 &
wait
for task in digits sort-of-clevr captions; do
  echo "== $task"; grep -E "step .*00:|accuracy|object F1|relational|seconds|steps|Error|error" "$out/$task.log" | tail -14
done
