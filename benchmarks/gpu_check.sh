#!/usr/bin/env bash
# Device check: a study on one GPU (or, to test the script itself, on a CPU) in under 8
# minutes, then one results table.
#
#   bash benchmarks/gpu_check.sh [OUT]                          # from a checkout with .venv
#   BUNDLE=gpu-bundle bash benchmarks/gpu_check.sh [OUT]        # on an air-gapped GPU box
#
# With .venv (bash scripts/setup.sh on a machine with PyPI access): the default study on the
# built-in model, quality through transformers and speed through vLLM's CUDA kernels (a vLLM
# env under the cache folder carried along, or VLLM_PYTHON=/path/to/python of one).
#
# With BUNDLE: the image's python3 (torch, transformers and common packages, no network) and
# the wheels `scripts/gpu_bundle.py` built, installed with --no-deps into TARGET; the model
# is a random-weight Llama of the built-in model's shape (576/1536, 30 layers) built there
# from the config and tokenizer the bundle carries (the built-in GGUF is 94 MiB, over what
# one call may carry), so its quality figures mean nothing: the check is that every stage
# runs on CUDA, and which kernels ran (the speed record says native or emulated). Schemes
# bf16, fp8-dynamic, w4a16-gptq, w8a8-int8; metrics size, perplexity, divergence, speed,
# generations, all through transformers (vLLM's wheel alone is over 200 MiB: it cannot be
# carried there). On CUDA, benchmarks/fp8_probe.py then says whether the GPU multiplies FP8
# natively (OUT/../fp8_probe.json). DEVICE=cpu runs the same on a CPU, which is how it is
# tested here.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)/gpu-study}
LIMIT_S=${LIMIT_S:-480}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
started=$(date +%s)
status=0
if [ -n "${BUNDLE:-}" ]; then
  PY=${PY:-python3}
  TARGET=${TARGET:-$(mktemp -d)/site}
  "$PY" -m pip install --quiet --no-deps --no-index --target "$TARGET" "$BUNDLE"/*.whl
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
  MODEL="$(dirname "$OUT")/random-smollm2-shape"
  "$PY" - "$BUNDLE/model-shape" "$MODEL" <<'EOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
source, dest = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
model.to(torch.bfloat16).save_pretrained(dest)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(f"{source}/{name}", dest)
EOF
  if [ "$DEVICE" = cuda ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
  fi
  timeout "$LIMIT_S" "$PY" -m quantbench run --model "$MODEL" --out "$OUT" --device "$DEVICE" \
    --schemes bf16,fp8-dynamic,w4a16-gptq,w8a8-int8 --calibration-samples 32 \
    --calibration-seq-len 256 --max-tokens 4096 || status=$?
  "$PY" -m quantbench schemes > "$(dirname "$OUT")/schemes.txt" 2>&1 || true
  if [ "$DEVICE" = cuda ]; then
    # Whether this GPU has native FP8 matmuls at all: the study's transformers backend
    # emulates fp8-dynamic whatever the GPU can do.
    "$PY" benchmarks/fp8_probe.py "$(dirname "$OUT")/fp8_probe.json" || true
  fi
else
  PY=${PY:-.venv/bin/python}
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    f'no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda or \"no\"})')"
  vllm=()
  if [ -n "${VLLM_PYTHON:-}" ]; then vllm=(--vllm-python "$VLLM_PYTHON"); fi
  timeout "$LIMIT_S" "$PY" -m quantbench run --out "$OUT" --device cuda \
    --speed-backend vllm "${vllm[@]}" || status=$?
fi
elapsed=$(( $(date +%s) - started ))
echo "gpu_check: ${elapsed} s (limit ${LIMIT_S} s), exit status ${status}; results in ${OUT}"
exit "$status"
