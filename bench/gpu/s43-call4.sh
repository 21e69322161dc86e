#!/usr/bin/env bash
# Session 43, call 4: batch 1 (issue 5's unmet point) under the switches that shape its step,
# re-measured on the committed build: programmatic dependent launch for every launch (off at
# batch 1 since session 22), launching ahead off, the portable attention instead of the cluster
# one, the persistent step. Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
for round in 1 2; do
  for v in "X=0" "BITNET_CUDA_PDL=1" "BITNET_CUDA_AHEAD=0" "BITNET_CUDA_PDL=1 BITNET_CUDA_AHEAD=0" "BITNET_CUDA_ATTN_ONE=0" "BITNET_CUDA_MEGA=1"; do
    echo "== round $round: $v"
    env $v bash -c "$(declare -f b); B=$B; b -n 64 -b 1 --gpu-head int8 | grep ' b'"
  done
done
echo "== PDL=1: parity"; BITNET_CUDA_PDL=1 timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked" | tail -3
