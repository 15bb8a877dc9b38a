#!/usr/bin/env bash
# Peer for `make bench` (face task): face-api 1.7.15 on tfjs 4.22.0, cpu backend then wasm backend.
# usage: scripts/face_tfjs/run.sh SHARED_DIR [--threads 2] [--min-time 5]
# JSON lines go to stdout, progress and notes to stderr. The node packages are installed from the pinned lock into
# $FACE_TFJS_DIR (default /tmp/face-tfjs), never into the repository; a later run with the same lock reuses them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="${1:?usage: run.sh SHARED_DIR [--threads N] [--min-time S]}"; shift
threads=2; min_time=5
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --min-time) min_time="$2"; shift 2 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "run.sh: '$tool' not found; install Node.js >= 18 with npm" >&2; exit 1; }
done

dir="${FACE_TFJS_DIR:-/tmp/face-tfjs}"
stamp="$dir/.installed-lock.sha256"  # written only after a successful npm ci, so a broken install is redone
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "run.sh: npm ci into $dir" >&2
  mkdir -p "$dir" && rm -f "$stamp"
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  # --ignore-scripts: nothing here needs an install script (core-js only prints a banner).
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
  echo "$want" >"$stamp"
fi

# NODE_PATH lets bench.js run in place and still resolve the packages installed in $dir.
export NODE_PATH="$dir/node_modules"
models="$shared/assets/models/face"
rc=0  # run wasm even when cpu fails, then report the failure
node "$here/bench.js" "$models" "$shared/assets" --backend cpu --min-time "$min_time" || rc=1
node "$here/bench.js" "$models" "$shared/assets" --backend wasm --threads "$threads" --min-time "$min_time" || rc=1
exit $rc
