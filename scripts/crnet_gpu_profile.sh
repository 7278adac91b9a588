#!/usr/bin/env bash
# Kept for old notes: the CR-Net part of scripts/gpu/run_all.sh (seven methods at 60M, bf16, synthetic tokens).
# The full CR-Net bench on real text at this scale is `pretrainkit bench crnet --config configs/crnet/paper.yaml`.
exec "$(dirname "$0")/gpu/run_all.sh" --parts crnet "$@"
