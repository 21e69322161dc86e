#!/usr/bin/env bash
# Session 44, call 1: session 43's two-tile bulk head (`head_wgb2_*`, the default) against one
# tile (BITNET_CUDA_HEAD_TILES=1) at the batch sizes session 43 left untimed: 40 and 48 rows (one
# pass, the head inside the graph), 96 (two x row blocks) and 192 (three). Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance heads"; timeout 120 .gpu/conformance --test-threads=1 head 2>&1 | grep -E "^test |test result|panicked|left|right" | tail -6
for round in 1 2; do
  for t in 1 2; do
    echo "== round $round: tiles $t q8 int8"
    BITNET_CUDA_HEAD_TILES=$t bash -c "$(declare -f b); B=$B; b -n 32 -b 40,48,96,192 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
for t in 1 2; do
  echo "== tiles $t f16"; BITNET_CUDA_HEAD_TILES=$t bash -c "$(declare -f b); B=$B; b -n 32 -b 48,96,192 | grep ' b'"
done
