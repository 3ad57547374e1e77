#!/usr/bin/env bash
# The GPU bundle, tested on this CPU machine: build it, install it into a fresh venv that
# holds only torch, transformers and the GPU image's other packages quantbench uses, then
# `quantbench schemes` and benchmarks/gpu_check.sh's study on the CPU from that install.
#
#   bash benchmarks/gpu_bundle_check.sh [WORK]
#
# The bundle is built twice: for Python 3.12 (the GPU image's; its size is the one that
# counts) and for this machine's Python (to install here). Writes WORK/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
here=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
.venv/bin/python scripts/gpu_bundle.py --out "$WORK/bundle-3.12" --python-version 3.12 \
  > "$WORK/bundle-3.12.txt" 2>/dev/null
.venv/bin/python scripts/gpu_bundle.py --out "$WORK/bundle-$here" --python-version "$here" \
  > "$WORK/bundle-$here.txt" 2>/dev/null
# The image's packages that quantbench's requirements reach, at this checkout's versions.
image=$(.venv/bin/python - <<'EOF'
import sys
sys.path.insert(0, "scripts")
from importlib.metadata import version
import gpu_bundle as g
closure = g.requirement_closure("quantbench")
image = {g.normalize(n) for n in g.IMAGE_PACKAGES}
print(" ".join(f"{n}=={v}" for n, v in sorted(closure.items())
               if n in image and not n.startswith("nvidia-") and n not in ("torch", "triton")))
EOF
)
rm -rf "$WORK/venv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet "torch==2.13.0" "transformers==5.17.0" $image
started=$(date +%s)
DEVICE=cpu LIMIT_S=${LIMIT_S:-1800} BUNDLE="$WORK/bundle-$here" PY="$WORK/venv/bin/python" \
  TARGET="$WORK/site" bash benchmarks/gpu_check.sh "$WORK/study/out" > "$WORK/study.log" 2>&1 \
  || status=$?
{
  echo "bundle for Python 3.12: $(tail -1 "$WORK/bundle-3.12.txt")"
  echo "bundle for Python $here: $(tail -1 "$WORK/bundle-$here.txt")"
  echo "fresh venv: torch 2.13.0, transformers 5.17.0 and $(echo "$image" | wc -w) image packages"
  echo "gpu_check.sh on the CPU: $(( $(date +%s) - started )) s, exit status ${status:-0}"
  tail -1 "$WORK/study.log"
  head -3 "$WORK/study/schemes.txt" 2>/dev/null || true
} | tee "$WORK/summary.txt"
