#!/usr/bin/env bash
# The wide tensor-core GEMM (opt-in: BITNET_CUDA_WIDE=1): GPU tests, A/B against ternary_mma_4 (BITNET_CUDA_WIDE=0/1),
# split targets (BITNET_CUDA_WIDE_PER_SM), and ncu per launch. Run as `bash bench/gpu/wide-ab.sh` after
# `scripts/gpu-build.sh .gpu`, with .gpu carried to the GPU machine.
set -uo pipefail
B=.gpu/bitnet
export BITNET_REQUIRE_GPU=1 BITNET_CACHE_DIR=/tmp/bitnet-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
built_at=$(cat .gpu/built_at); mkdir -p "$(dirname "$built_at")"; ln -sfn "$PWD" "$built_at"
for t in conformance parity; do echo "== test $t"; timeout 300 .gpu/$t --test-threads=1 2>&1 | tail -8; done
$B convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
for round in 1 2; do
  for v in 0 1; do
    echo "== round $round BITNET_CUDA_WIDE=$v"
    BITNET_CUDA_WIDE=$v $B bench -m /tmp/same.gguf --device cuda -p 128,512 -n 64 -r 3 -b 16,64 --depth 512 -o md 2>&1 | grep "^|" | tail -5
  done
done
for ps in 1 3 4; do
  echo "== BITNET_CUDA_WIDE_PER_SM=$ps"
  BITNET_CUDA_WIDE_PER_SM=$ps $B bench -m /tmp/same.gguf --device cuda -p 0 -n 64 -r 3 -b 16,64 --depth 512 -o md 2>&1 | grep "^|" | tail -2
done
export BITNET_CUDA_GRAPHS=0 BITNET_CUDA_PDL=0
for v in 0 1; do
  echo "== ncu, batch-64 decode layer, WIDE=$v"
  BITNET_CUDA_WIDE=$v timeout 200 ncu --clock-control none --cache-control none -k regex:'ternary_mma' -s 240 -c 4 \
    --section SpeedOfLight --section LaunchStats --section Occupancy "$B" bench -m /tmp/same.gguf --device cuda -p 0 -n 4 -r 1 -b 64 --depth 1 2>&1 \
    | grep -v "^==PROF==" | grep -E "ternary|Duration|Registers|Achieved Occ|Grid Size|Memory Throughput|DRAM Through|Compute \(SM\)" | head -40
done
echo "== ncu, 256-token prefill, WIDE=1"
timeout 120 ncu --clock-control none --cache-control none -k regex:'ternary_mma' -s 4 -c 4 --section SpeedOfLight "$B" bench \
  -m /tmp/same.gguf --device cuda -p 256 -n 0 -r 1 2>&1 | grep -v "^==PROF==" | grep -E "ternary|Duration|Memory Throughput|Compute \(SM\)" | head -20
