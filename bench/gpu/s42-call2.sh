#!/usr/bin/env bash
# Session 42, call 2: the greedy head's epilogue without shared atomics (one slot per warp and
# row), x's planes written by the split kernel in the bulk head's stages' order (no retile
# launch per step), two instances of each decode graph (BITNET_CUDA_AHEAD=one: one); A/B of
# BITNET_CUDA_HEAD_GREEDY and BITNET_CUDA_AHEAD. Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "^test |test result|panicked|skipped|left|right" | tail -14
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "^test |test result|panicked|left|right" | tail -22
A="BITNET_CUDA_HEAD_GREEDY=0 BITNET_CUDA_AHEAD=0"; Bv="BITNET_CUDA_HEAD_GREEDY=0 BITNET_CUDA_AHEAD=1"; C="BITNET_CUDA_HEAD_GREEDY=1 BITNET_CUDA_AHEAD=1"
for round in 1 2 3; do
  for v in "$A" "$Bv" "$C"; do
    echo "== round $round: $v q8 int8"
    env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
D="BITNET_CUDA_HEAD_GREEDY=1 BITNET_CUDA_AHEAD=one"
for round in 1 2; do
  for v in "$A" "$C"; do
    echo "== round $round: $v f16 b64"; env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64 | grep ' b'"
  done
  for v in "$A" "$C" "$D"; do
    echo "== round $round: $v int8 b1"; env $v bash -c "$(declare -f b); B=$B; b -n 64 -b 1 --gpu-head int8 | grep ' b1'"
  done
done
echo "== profile HEAD_GREEDY=1 b64 q8 int8"
BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head|argmax|split_rows|wg_tile|keys" | head -12
echo "== server and CLI (scripts/gpu-check.sh tests, without the test binaries)"
TESTS= timeout 150 bash scripts/gpu-check.sh .gpu tests 2>&1 | grep -vE "^test |^running|^$" | grep -E "request|turn|exit|same|differ|reproducible|device|==" | head -30
