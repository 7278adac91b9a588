#!/usr/bin/env bash
# CR-Net GPU profile: all seven methods on GaLore/CoLA's 60M LLaMA config, one GPU, about 5-8 minutes on an H100
# (configs/crnet/paper.yaml: steps are calibrated so the slowest method fits bench.arm_budget_s; the same step count
# for every method). Writes <results>/crnet_gpu.md, crnet_gpu.json (numbers, the card's name) and crnet_gpu_log.txt.
#
#   scripts/crnet_gpu_profile.sh [RESULTS_DIR] [more `pretrainkit bench crnet` options, e.g. --set bench.seeds=[0,1]]
#
# RESULTS_DIR defaults to $OUT (the device tool's output folder) or docs/results. The text corpus is the shared
# one ($PRETRAINKIT_SHARED_DATA/text, else ../shared/data/text beside the checkout); CRNET_DATA=PATH uses another
# folder of .txt/.jsonl files. Runs from the source tree (PYTHONPATH=src): needs torch with CUDA, tokenizers,
# safetensors, numpy, pyyaml, tqdm; transformers is optional (the HF throughput row is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-docs/results}}"
shift || true
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PY" - <<'PYEOF'
import importlib.util, sys
need = ["torch", "tokenizers", "safetensors", "numpy", "yaml", "tqdm"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"crnet_gpu_profile: missing Python packages: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit("crnet_gpu_profile: torch sees no CUDA device")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"transformers {'present' if importlib.util.find_spec('transformers') else 'absent'}")
PYEOF

DATA_ARGS=()
if [[ -n "${CRNET_DATA:-}" ]]; then DATA_ARGS=(--data "$CRNET_DATA"); fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/crnet_gpu_card.txt" 2>/dev/null || true

start=$(date +%s)
# 570 s hard cap: the profile is sized for ~6 min; a stuck run must not eat the whole device budget.
timeout 570 "$PY" -m pretrainkit.cli bench crnet --config configs/crnet/paper.yaml --results-dir "$RESULTS" \
  --name crnet_gpu --threads 8 "${DATA_ARGS[@]}" "$@" 2>&1 | grep -v '^USDT:' | tee "$RESULTS/crnet_gpu_log.txt"
status=${PIPESTATUS[0]}
echo "crnet_gpu_profile: exit $status after $(( $(date +%s) - start )) s" | tee -a "$RESULTS/crnet_gpu_log.txt"
exit "$status"
