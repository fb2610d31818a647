# Sourced by the device scripts: install what the GPU image lacks (wheels carried in .whl/, see
# bench/gpu_prepare.sh) and this working tree's distributions into /tmp/site, then use them.
#   plugins="lm trainer" . bench/gpu_install.sh
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
fi
dists=". ./sdk"
for p in ${plugins:-lm trainer}; do dists="$dists ./builtin_plugins/apt-plugin-$p"; done
# shellcheck disable=SC2086
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/site $dists || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
