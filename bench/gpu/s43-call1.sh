#!/usr/bin/env bash
# Session 43, call 1: the bulk head's items of two table tiles (`head_wgb2_*`: each stage of x's
# planes serves 256 table rows instead of 128, x's bytes through L2 halved; the copier a whole
# warpgroup giving its registers to the multipliers by setmaxnreg) against one tile
# (BITNET_CUDA_HEAD_TILES=1, session 42's kernels). Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "^test |test result|panicked|skipped|left|right" | tail -14
echo "== conformance heads, one tile"; BITNET_CUDA_HEAD_TILES=1 timeout 100 .gpu/conformance --test-threads=1 head 2>&1 | grep -E "^test |test result|panicked|left|right" | tail -6
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked|left|right" | tail -6
for t in 1 2; do
  echo "== profile tiles $t b64 q8 int8"
  BITNET_CUDA_HEAD_TILES=$t BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64,128 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head_wgb|keys|split_rows_i16p" | head -6
  echo "== profile tiles $t b64 f16"
  BITNET_CUDA_HEAD_TILES=$t BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 2>&1 | grep -iE "head_wgb|split_rows_f16p" | head -4
done
for round in 1 2 3; do
  for t in 1 2; do
    echo "== round $round: tiles $t q8 int8"
    BITNET_CUDA_HEAD_TILES=$t bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
for round in 1 2; do
  for t in 1 2; do
    echo "== round $round: tiles $t f16 b64,128"; BITNET_CUDA_HEAD_TILES=$t bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 | grep ' b'"
  done
done
