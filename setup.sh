#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with pinned dependencies (torch CPU build), the kernel, the
# SDK and the builtin plugins installed editable. `--dev` adds the test tools. Re-running is quick:
# nothing is reinstalled unless a requirements or pyproject file changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.setup-$(cat requirements*.txt pyproject.toml sdk/pyproject.toml builtin_plugins/*/pyproject.toml | sha256sum | cut -c1-16)-$req"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q setuptools==84.2.1
  # setuptools' editable-install notices are noise for users of this script
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --no-build-isolation -r "$req"
  rm -f .venv/.setup-*
  touch "$stamp"
fi
