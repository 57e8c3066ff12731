#!/usr/bin/env bash
# A simulated GPU node on this machine, to prove the GPU kit before a device is lent: a fresh venv of the node's
# Python holding only the node's packages that diffurl reaches (benchmarks/gpu_node_packages.txt, at the versions
# it pins: torch 2.11, transformers 5.17, tokenizers 0.23.2, ...), then the kit installed into a temp folder the
# way the node does it, and the GPU check's CPU dry run (every section at toy shapes) with that venv's python.
#   bash benchmarks/simulated_device.sh                         # .gpu-kit (built first if absent), python3.12
#   bash benchmarks/simulated_device.sh --kit DIR --python python3.12 --venv .simdev
# The venv is made once (torch's CUDA wheel and its libraries: ~5 GB, some minutes); the kit is built once too.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit SIM_PYTHON=python3.12 VENV=.simdev
while [ $# -gt 0 ]; do
  case "$1" in
    --kit) KIT="$2"; shift 2 ;;
    --python) SIM_PYTHON="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    *) echo "simulated_device: unknown argument $1 (--kit DIR, --python PYTHON, --venv DIR)" >&2; exit 2 ;;
  esac
done
"$SIM_PYTHON" -V >/dev/null 2>&1 || { echo "simulated_device: $SIM_PYTHON does not run (--python PYTHON)" >&2; exit 2; }
version=$("$SIM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
make install >/dev/null
t0=$(date +%s)
if [ ! -f "$KIT/MANIFEST.txt" ]; then
  .venv/bin/python benchmarks/gpu_kit.py --python-version "$version" --out "$KIT"
fi
t1=$(date +%s)
if [ ! -f "$VENV/.node-installed" ]; then
  echo "simulated_device: a venv of $("$SIM_PYTHON" -V) with the node's packages in $VENV"
  rm -rf "$VENV"
  "$SIM_PYTHON" -m venv "$VENV"
  .venv/bin/python benchmarks/gpu_kit.py --node-requirements > "$VENV/node-requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$VENV/node-requirements.txt"
  # what those pulled in beyond the node's list (newer releases need more than the node's own): out, so that
  # the kit alone must supply it
  extra=$("$VENV/bin/python" benchmarks/gpu_kit.py --not-on-node)
  [ -z "$extra" ] || "$VENV/bin/python" -m pip uninstall --quiet --yes $extra
  touch "$VENV/.node-installed"
fi
extra=$("$VENV/bin/python" benchmarks/gpu_kit.py --not-on-node)
[ -z "$extra" ] || { echo "simulated_device: $VENV has what the GPU node does not: $extra" >&2; exit 1; }
echo "simulated_device: $VENV holds only packages the GPU node has ($("$VENV/bin/python" -V))"
t2=$(date +%s)
PYTHON="$VENV/bin/python" bash benchmarks/gpu_check.sh --kit "$KIT" --cpu-dry-run
t3=$(date +%s)
echo "simulated_device: kit $((t1 - t0)) s (0 if it was built), venv $((t2 - t1)) s, dry run $((t3 - t2)) s"
