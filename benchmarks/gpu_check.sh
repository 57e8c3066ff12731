#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py, whose docstring says what it measures), from the repository root, cut
# at 8 minutes:
#   bash benchmarks/gpu_check.sh [--budget-s 420] [--sections decode,learner,...]
#   bash benchmarks/gpu_check.sh --kit .gpu-kit     # a bare GPU node: the node's python3 and torch, the rest from
#                                                   # the kit (benchmarks/gpu_kit.py), installed into a temp dir
#   bash benchmarks/gpu_check.sh --cpu-dry-run      # every section at toy shapes on CPU
#   PYTHON=python3 bash benchmarks/gpu_check.sh     # a python that has this project's dependencies
# Downloads nothing, except `make install` when there is no --kit, no PYTHON and no .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) [ $# -ge 2 ] || { echo "gpu_check: --kit needs a folder" >&2; exit 2; }; KIT="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$KIT" ]; then
  [ -f "$KIT/MANIFEST.txt" ] || { echo "gpu_check: --kit $KIT: no MANIFEST.txt there; build it with" \
    ".venv/bin/python benchmarks/gpu_kit.py" >&2; exit 2; }
  KIT="$(cd "$KIT" && pwd)"
  PYTHON="${PYTHON:-python3}"
  want=$(sed -n 's/^target: CPython \([0-9.]*\),.*/\1/p' "$KIT/MANIFEST.txt")
  have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$want" = "$have" ] || { echo "gpu_check: the kit is for CPython $want, $PYTHON is $have; rebuild it with" \
    "benchmarks/gpu_kit.py --python-version $have" >&2; exit 2; }
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/diffurl-kit.XXXXXX")"
  trap 'rm -rf "$SITE"' EXIT
  t0=$(date +%s)
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --target "$SITE" "$KIT"/wheels/*.whl
  tar -xJf "$KIT"/ray-*.tar.xz -C "$SITE"
  echo "gpu_check: the kit ($(sed -n 's/^total: //p' "$KIT/MANIFEST.txt")) installed into $SITE in" \
    "$(( $(date +%s) - t0 )) s"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH" \
    LD_LIBRARY_PATH="$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
elif [ -z "${PYTHON:-}" ] && [ ! -x .venv/bin/python ]; then
  echo "gpu_check: no .venv/bin/python here; running make install (needs the package index)" >&2
  make install
fi
PYTHON="${PYTHON:-.venv/bin/python}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "gpu_check: no nvidia-smi on this machine"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" \
  RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0 HF_HUB_DISABLE_PROGRESS_BARS=1 \
  TRANSFORMERS_VERBOSITY=error
# not exec: the trap removes the kit's temp dir afterwards
timeout 480 "$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}"
