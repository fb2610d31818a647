#!/usr/bin/env bash
# Device script: the CUDA tests and the attention benchmark on a GPU machine.
# The machine has torch but not every dependency: wheels for the missing ones travel in .whl/
# (see bench/README.md); the project's distributions are installed from the working tree.
# `bash bench/gpu_check.sh tests` runs only the CUDA tests (a few minutes); no argument runs everything.
set -uo pipefail
export PYTHONUNBUFFERED=1
plugins="lm trainer vision"
tests="tests/test_gpu.py builtin_plugins/apt-plugin-lm/tests/test_model.py builtin_plugins/apt-plugin-vision/tests"
if python3 -c "import librosa, soundfile" 2>/dev/null; then  # the audio plugin's own dependencies
  plugins="$plugins audio"
  tests="$tests builtin_plugins/apt-plugin-audio/tests"
fi
. bench/gpu_install.sh
python3 -c "import transformers; print('transformers', transformers.__version__)"
# shellcheck disable=SC2086
python3 -m pytest -q -p no:cacheprovider -rs $tests 2>&1 | tail -25
[ "${1:-}" = "tests" ] && exit 0
torchrun --standalone --nproc-per-node=1 -m apt_kernel.cli run pipelines/quickstart.toml --no-progress \
  --set trainer.device=cuda --set trainer.precision=bf16 --set trainer.max_steps=200 --set trainer.log_every=100 \
  --set data.batch_size=64 --set data.max_chars=300000 --set pipeline.output_dir="'/tmp/gpu-qs'" 2>&1 | grep -E "MFU|val loss|Finished|error"
# FSDP (sharded model) on CUDA with nccl, bf16; then resumed
for extra in "" "--resume latest --set trainer.max_steps=60 --set trainer.epochs=3"; do
  torchrun --standalone --nproc-per-node=1 -m apt_kernel.cli run pipelines/quickstart.toml --no-progress \
    --set trainer.device=cuda --set trainer.precision=bf16 --set trainer.strategy=fsdp --set trainer.max_steps=40 \
    --set trainer.log_every=20 --set data.max_chars=100000 --set pipeline.output_dir="'/tmp/gpu-fsdp'" $extra 2>&1 \
    | grep -E "MFU|val loss|resumed|Finished|error|Error"
done
python3 bench/bench_attention.py --device cuda --rounds 7 --batch 32 --seq 256
python3 bench/bench_attention.py --device cuda --rounds 7 --batch 32 --seq 256 --precision bf16
python3 bench/bench_attention.py --device cuda --rounds 5 --batch 8 --seq 1024 --d-model 512 --heads 8 --layers 6 --precision bf16
