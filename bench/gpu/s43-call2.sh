#!/usr/bin/env bash
# Session 43, call 2: the split kernels' loads issued together (split_load / split_chunks) and a
# step of two lanes' head reading the further lane's rows where it left them
# (BITNET_CUDA_SPLIT_LANES=0: copied after the model's own rows first, as before); the two-tile
# bulk head (call 1) the default. Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "^test |test result|panicked|skipped|left|right" | tail -14
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked|left|right" | tail -6
echo "== parity, lanes' rows copied"; BITNET_CUDA_SPLIT_LANES=0 timeout 150 .gpu/parity --test-threads=2 lanes 2>&1 | grep -E "test result|panicked|left|right" | tail -4
for t in 1 2; do
  echo "== profile tiles $t b64 q8 int8"
  BITNET_CUDA_HEAD_TILES=$t BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head_wgb|keys|split_rows|final_norm" | head -6
done
echo "== profile b16 q8 int8"
BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 16 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head_|split_rows|argmax" | head -6
for round in 1 2 3; do
  for v in 0 1; do
    echo "== round $round: split lanes $v q8 int8"
    BITNET_CUDA_SPLIT_LANES=$v bash -c "$(declare -f b); B=$B; b -n 32 -b 16,64,128 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
for v in 0 1; do
  echo "== split lanes $v f16 b64,128"; BITNET_CUDA_SPLIT_LANES=$v bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 | grep ' b'"
done
echo "== server and CLI (scripts/gpu-check.sh tests, without the test binaries)"
TESTS= timeout 150 bash scripts/gpu-check.sh .gpu tests 2>&1 | grep -E "request|turn|exit|same|differ|reproducible" | head -20
