#!/usr/bin/env bash
# The tensor-core attention (attn_mma_f16_h*, default; BITNET_CUDA_ATTN_MMA=0 takes the vector
# kernel): GPU tests, A/B in one call, ncu on one batch-64 decode layer's attention, and the
# per-kernel profile of batch-1 decode. Run as `bash bench/gpu/attn-ab.sh` after
# `scripts/gpu-build.sh .gpu`, with .gpu carried to the GPU machine.
set -uo pipefail
B=.gpu/bitnet
export BITNET_REQUIRE_GPU=1 BITNET_CACHE_DIR=/tmp/bitnet-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
built_at=$(cat .gpu/built_at); mkdir -p "$(dirname "$built_at")"; ln -sfn "$PWD" "$built_at"
echo "== conformance"; timeout 300 .gpu/conformance --test-threads=1 --nocapture 2>&1 | grep -E "^test |test result|panicked|worst error" | grep -E "tensor cores true|^test|result|panicked" | tail -30
echo "== parity"; timeout 300 .gpu/parity --test-threads=1 2>&1 | grep -E "^test |test result|panicked|within" | tail -14
$B convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
for round in 1 2; do
  for v in 0 1; do
    echo "== round $round BITNET_CUDA_ATTN_MMA=$v"
    BITNET_CUDA_ATTN_MMA=$v $B bench -m /tmp/same.gguf --device cuda -p 512 -n 64 -r 3 -b 32,64 --depth 512 -o md 2>&1 | grep "^|" | tail -4
  done
done
echo "== b64 d2048"
for v in 0 1; do BITNET_CUDA_ATTN_MMA=$v $B bench -m /tmp/same.gguf --device cuda -p 0 -n 32 -r 2 -b 64 --depth 2048 -o md 2>&1 | grep "^|" | tail -1; done
export BITNET_CUDA_GRAPHS=0
for v in 0 1; do
  echo "== ncu attention, batch 64 depth 512, ATTN_MMA=$v"
  BITNET_CUDA_ATTN_MMA=$v timeout 150 ncu --clock-control none --cache-control none -k regex:'attn_' -s 60 -c 2 \
    --section SpeedOfLight --section LaunchStats --section Occupancy "$B" bench -m /tmp/same.gguf --device cuda -p 0 -n 4 -r 1 -b 64 --depth 512 2>&1 \
    | grep -v "^==PROF==" | grep -E "attn|Duration|Registers Per|Achieved Occ|DRAM Through|Compute \(SM\)" | head -14
done
echo "== batch-1 profile (per kernel, events, graphs off)"
BITNET_CUDA_PROFILE=1 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 32 -r 1 -b 1 --depth 512 2>&1 | grep -vE "^\|" | tail -25
echo "== batch-64 profile"
BITNET_CUDA_PROFILE=1 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 16 -r 1 -b 64 --depth 512 2>&1 | grep -vE "^\|" | tail -25
