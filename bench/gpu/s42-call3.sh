#!/usr/bin/env bash
# Session 42, call 3: the bulk head persistent (as many blocks as fit, each taking (table tile,
# x row block) items in turn; BITNET_CUDA_HEAD_PERSIST=0: one block per item as before), with
# greedy tokens chosen inside it and steps launched ahead (the defaults since call 2).
# Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "^test |test result|panicked|skipped|left|right" | tail -14
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked|left|right" | tail -6
for round in 1 2 3; do
  for v in "BITNET_CUDA_HEAD_PERSIST=0" "BITNET_CUDA_HEAD_PERSIST=1"; do
    echo "== round $round: $v q8 int8"
    env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 40,64,128 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
for round in 1 2; do
  for v in "BITNET_CUDA_HEAD_PERSIST=0" "BITNET_CUDA_HEAD_PERSIST=1"; do
    echo "== round $round: $v f16 b64,128"; env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 | grep ' b'"
  done
done
for v in "BITNET_CUDA_HEAD_PERSIST=0" "BITNET_CUDA_HEAD_PERSIST=1"; do
  echo "== profile $v b64 q8 int8"
  env $v BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head_wgb|keys|split_rows_i16p" | head -4
  echo "== profile $v b64 f16"
  env $v BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 2>&1 | grep -iE "head_wgb|argmax|split_rows_f16p" | head -4
done
echo "== server and CLI (scripts/gpu-check.sh tests, without the test binaries)"
TESTS= timeout 150 bash scripts/gpu-check.sh .gpu tests 2>&1 | grep -E "request|turn|exit|same|differ|reproducible" | head -20
