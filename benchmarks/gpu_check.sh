#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py, whose docstring says what it prints), from the repository root, cut at
# 8 minutes:
#   bash benchmarks/gpu_check.sh [--budget-s 420] [--shapes 0.5B,1.5B]
#   bash benchmarks/gpu_check.sh --cpu-dry-run
#   PYTHON=python3 bash benchmarks/gpu_check.sh      # a python whose torch has CUDA and that has this project's
#                                                    # dependencies (the repo itself comes from PYTHONPATH)
# Downloads nothing, except `make install` when there is no PYTHON and no .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ] && [ ! -x .venv/bin/python ]; then
  echo "gpu_check: no .venv/bin/python here; running make install (needs the package index)" >&2
  make install
fi
PYTHON="${PYTHON:-.venv/bin/python}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi
else
  echo "gpu_check: no nvidia-smi on this machine"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" \
  RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  TRANSFORMERS_VERBOSITY=error
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
