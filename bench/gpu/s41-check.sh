#!/usr/bin/env bash
# Session 41's committed build on the GPU machine, in one call: the test suite and the server
# check (scripts/gpu-check.sh tests), then decode steps with the bulk-copy warpgroup heads (the
# default) against BITNET_CUDA_HEAD_WG=nobulk, two rounds, alternated.
#   here:  bash scripts/gpu-build.sh .gpu && cp bench/gpu/s41-check.sh .gpu/run.sh
#   there: bash .gpu/run.sh (carry .gpu); the log is $OUT/log.txt
exec > "$OUT/log.txt" 2>&1
cd "$(dirname "$0")/.."
export BITNET_CACHE_DIR=$PWD/.gpu/cache
bash scripts/gpu-check.sh .gpu tests 2>&1 | grep -E "^== |test result|panicked|FAIL|rror|equal" | cut -c1-200
export BITNET_REQUIRE_GPU=1
B=.gpu/bitnet
[ -e /tmp/same.gguf ] || $B convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
b() { timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 32 -r 2 --depth 512 -o md "$@" 2>&1 | grep -E "^\||rror" | grep -v -- '---' | grep -v 'model ' | cut -d'|' -f7,8 | tr '\n' ' '; echo; }
for round in 1 2; do for v in default nobulk; do
  echo "q8 int8 b1,b64,b128 $v: $(BITNET_CUDA_HEAD_WG=$v bash -c "$(declare -f b); B=$B; b -b 1,64,128 --kv q8 --gpu-head int8")"
  echo "f16 b64,b128 $v: $(BITNET_CUDA_HEAD_WG=$v bash -c "$(declare -f b); B=$B; b -b 64,128")"
done; done
