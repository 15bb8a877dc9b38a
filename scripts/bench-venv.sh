#!/usr/bin/env bash
# Creates the peers' Python environment (pinned in ../shared/bench/requirements.txt) once.
set -euo pipefail
bench_dir=$1
venv=/tmp/bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import onnxruntime" 2>/dev/null; then
  echo "bench: creating $venv from $bench_dir/requirements.txt" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$bench_dir/requirements.txt"
fi
