#!/usr/bin/env bash
# Same-call A/B of two builds on the GPU machine: the new build's conformance and parity
# tests, then `bitnet bench` rounds alternating the base and the new binary (session 11's
# method: BENCHMARKS.md). Prepare here (carry `.gpu`; tracked files plus both binaries must
# stay under the 64 MiB a call carries, hence gzip):
#
#   git stash   # or check out the base commit
#   cargo build --release -p bitnet-cli && strip -o /tmp/base target/release/bitnet
#   git stash pop
#   scripts/gpu-build.sh .gpu && rm -f .gpu/compile
#   gzip -9 -c /tmp/base > .gpu/base.gz && gzip -9 .gpu/bitnet
#
# There: `bash bench/gpu/ab.sh [ROUNDS] [bench arguments]`, e.g.
#   bash bench/gpu/ab.sh 2 -p 512 -n 64 -r 3 -b 1,16,64 --depth 512
set -uo pipefail
ROUNDS=${1:-2}
shift || true
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(-p 512 -n 64 -r 3 -b 1,16,64 --depth 512)
# The new build's kernels come compiled in .gpu/cache (scripts/gpu-build.sh); the base compiles
# its own on first use into a cache of its own.
export BITNET_REQUIRE_GPU=1 BITNET_CACHE_DIR=$PWD/.gpu/cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
built_at=$(cat .gpu/built_at); mkdir -p "$(dirname "$built_at")"; ln -sfn "$PWD" "$built_at"
gunzip -c .gpu/base.gz > /tmp/base && chmod +x /tmp/base
gunzip -c .gpu/bitnet.gz > /tmp/new && chmod +x /tmp/new
echo "== conformance"; timeout 300 .gpu/conformance --test-threads=2 2>&1 | grep -E "^test .*FAILED|test result|panicked" | tail -5
echo "== parity"; timeout 300 .gpu/parity --test-threads=2 2>&1 | grep -E "^test .*FAILED|test result|panicked" | tail -5
/tmp/new convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
for round in $(seq "$ROUNDS"); do
  for b in /tmp/base /tmp/new; do
    echo "== round $round $b"
    cache=$PWD/.gpu/cache; [ "$b" = /tmp/base ] && cache=/tmp/bitnet-cache-base
    BITNET_CACHE_DIR=$cache "$b" bench -m /tmp/same.gguf --device cuda "${ARGS[@]}" -o md 2>&1 | grep "^|" | tail -n +3
  done
done
