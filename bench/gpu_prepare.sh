#!/usr/bin/env bash
# Run here, before a device session: what the GPU image lacks, ready to carry. Wheels for Python 3.12
# of the packages the image has no copy of go to .whl/ (bench/README.md lists them); nanoGPT's source
# (a `fetch github:karpathy/nanoGPT` mirror, or --nanogpt PATH) and Tiny Shakespeare go to .gpu-data/.
#   bash bench/gpu_prepare.sh [--nanogpt PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
nanogpt=/work/.mirror/karpathy+nanoGPT/repo
[ "${1:-}" = "--nanogpt" ] && nanogpt=$2
mkdir -p .whl .gpu-data
# the versions this project's environment runs (.venv, made by setup.sh), so both machines run the same code
names="transformers tokenizers safetensors huggingface-hub pydantic pydantic-core semver pillow annotated-types
typing-inspection hf-xet httpx httpcore h11 anyio regex typer shellingham filelock fsspec"
pins=""
for name in $names; do
  pins="$pins $(.venv/bin/python -m pip show "$name" 2>/dev/null | awk -v n="$name" '/^Version:/ {print n "==" $2}')"
done
# shellcheck disable=SC2086
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl $pins
if [ -d "$nanogpt/.git" ] || [ -f "$nanogpt/HEAD" ]; then  # a git directory: its newest commit's tree
  rm -rf .gpu-data/nanoGPT && mkdir -p .gpu-data/nanoGPT && git --git-dir="$nanogpt" archive HEAD | tar -x -C .gpu-data/nanoGPT
else
  rm -rf .gpu-data/nanoGPT && cp -r "$nanogpt" .gpu-data/nanoGPT
fi
cp ../shared/data/tinyshakespeare/input.txt .gpu-data/input.txt
du -sh .whl .gpu-data
