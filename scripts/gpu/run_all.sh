#!/usr/bin/env bash
# Every system's GPU profile in one call of under 10 minutes on one accelerator (about 7.5 on an H200):
# CR-Net's seven methods at 60M, L2M's and Saga's paper profiles shortened, the trainer's MFU on LLaMA 60M
# (eager and torch.compile), all with bf16 autocast, on synthetic inputs of the real shapes. Writes
# <out>/{crnet,l2m,saga,core}-gpu.{md,json} with the card's name. scripts/gpu/README.md has the device command.
#
#   scripts/gpu/run_all.sh [--dry-run] [--out DIR] [--parts crnet,l2m,saga,core] [--commit SHA] [--log FILE]
#
#   --dry-run   each part for two steps on tiny shapes, on the CPU (needs --out; never writes docs/results)
#   --out DIR   results folder (default docs/results)
#   --parts     a subset, e.g. to rerun one part that failed
#   --commit    the git commit to record where the copy has no .git (the device machine)
#   --log FILE  also write the whole output there
#
# Set-up on a bare machine: the package comes from this checkout (pip install --no-deps, so pip never pulls
# a torch; the GPU machine's own CUDA torch is used), else PYTHONPATH=src; wheels in .whl/ are installed
# into /tmp/site. PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=0
OUT_DIR=""
PARTS=""
COMMIT=""
LOG=""
ARGS_SEEN=("$@")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) [[ $# -ge 2 ]] || { echo "run_all.sh: --out needs a folder" >&2; exit 2; }; OUT_DIR="$2"; shift 2 ;;
    --parts) [[ $# -ge 2 ]] || { echo "run_all.sh: --parts needs a list" >&2; exit 2; }; PARTS="$2"; shift 2 ;;
    --commit) [[ $# -ge 2 ]] || { echo "run_all.sh: --commit needs a SHA" >&2; exit 2; }; COMMIT="$2"; shift 2 ;;
    --log) [[ $# -ge 2 ]] || { echo "run_all.sh: --log needs a file" >&2; exit 2; }; LOG="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $DRY -eq 1 && -z "$OUT_DIR" ]]; then
  echo "run_all.sh: --dry-run needs --out DIR (a dry run never writes docs/results)" >&2
  exit 2
fi

cd "$(dirname "$0")/../.."
ROOT="$PWD"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONUNBUFFERED=1

# ---- set-up: the package from this checkout, never a torch from a registry
if ! "$PY" -c "import pretrainkit" 2>/dev/null; then
  echo "run_all.sh: installing pretrainkit from $ROOT (no dependencies, no index)"
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --ignore-requires-python \
    --disable-pip-version-check -e "$ROOT" >/tmp/run_all_pip.log 2>&1 \
    || echo "run_all.sh: pip install failed (see /tmp/run_all_pip.log); running from src/ instead"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever else is installed
# Wheels carried in .whl/ (optuna and its needs, absent from the GPU image: scripts/gpu/README.md) go to /tmp/site.
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$ROOT"/.whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site" \
    || echo "run_all.sh: installing the wheels in .whl failed; the parts that need them will say so"
fi
"$PY" - "$DRY" <<'PYEOF'
import importlib.util, sys
need = ["pretrainkit", "torch", "numpy", "yaml", "safetensors", "tqdm", "matplotlib", "scipy"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"run_all.sh: missing Python packages: {', '.join(missing)}")
import torch
if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit("run_all.sh: torch sees no CUDA device (use --dry-run on a CPU machine)")
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"run_all.sh: python {sys.version.split()[0]}, torch {torch.__version__}, device {dev}")
PYEOF

CMD=(scripts/gpu/gpu_profile.py --command "scripts/gpu/run_all.sh ${ARGS_SEEN[*]}")
[[ $DRY -eq 1 ]] && CMD+=(--dry-run)
[[ -n "$OUT_DIR" ]] && CMD+=(--out "$OUT_DIR")
[[ -n "$PARTS" ]] && CMD+=(--parts "$PARTS")
[[ -n "$COMMIT" ]] && CMD+=(--commit "$COMMIT")
# The driver keeps its parts inside --total-s (520 s); this cap only stops a driver that hangs itself.
start=$(date +%s)
set +e
if [[ -n "$LOG" ]]; then
  timeout 570 "$PY" "${CMD[@]}" 2>&1 | tee "$LOG"
  status=${PIPESTATUS[0]}
else
  timeout 570 "$PY" "${CMD[@]}"
  status=$?
fi
set -e
echo "run_all.sh: exit $status after $(( $(date +%s) - start )) s"
exit "$status"
