#!/usr/bin/env bash
# Session 42, call 4: the head kernels after a decode step's lanes with programmatic dependent
# launch (BITNET_CUDA_HEAD_PDL=0: without), on the persistent bulk head with greedy tokens
# chosen inside it and steps launched ahead. The whole GPU suite on the final build.
# Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== compile"; timeout 60 .gpu/compile 2>&1 | grep -E "test result|panicked" | tail -2
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "test result|panicked|left|right" | tail -6
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked|left|right" | tail -6
for round in 1 2 3; do
  for v in "BITNET_CUDA_HEAD_PDL=0" "BITNET_CUDA_HEAD_PDL=1"; do
    echo "== round $round: $v q8 int8"
    env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 --kv q8 --gpu-head int8 | grep ' b'"
  done
done
for v in "BITNET_CUDA_HEAD_PDL=0" "BITNET_CUDA_HEAD_PDL=1"; do
  echo "== $v f16 b64"; env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64 | grep ' b'"
done
echo "== server and CLI (scripts/gpu-check.sh tests, without the test binaries)"
TESTS= timeout 150 bash scripts/gpu-check.sh .gpu tests 2>&1 | grep -E "request|turn|exit|same|differ|reproducible" | head -20
