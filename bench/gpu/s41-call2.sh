#!/usr/bin/env bash
# Session 41, call 2 (branch wip/s41): the host's side of a decode step. Page-locked buffers for
# the step's parameters and tokens (default; BITNET_CUDA_PINNED=0: the old pageable copies), the
# context's wait (BITNET_CUDA_SCHED=spin|block), BITNET_CUDA_STEP_GAPS=1 for where the time goes.
exec > "$OUT/log.txt" 2>&1
cd "$(dirname "$0")/.."
export BITNET_CACHE_DIR=$PWD/.gpu/cache BITNET_REQUIRE_GPU=1
built_at=$(cat .gpu/built_at); mkdir -p "$(dirname "$built_at")"; ln -sfn "$PWD" "$built_at"
B=.gpu/bitnet
$B convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
echo "== parity (pinned)"; timeout 90 .gpu/parity --test-threads=2 2>&1 | grep -E "test result|panicked" | tail -3
b() { timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 32 -r 2 --depth 512 -o md "$@" 2>&1 | grep -E "^\||rror|step gaps" | grep -v -- '---' | grep -v 'model ' | sed -E 's/^\| bitnet[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\|/|/' | cut -c1-160; }
for round in 1 2; do
  for v in "BITNET_CUDA_PINNED=0" "BITNET_CUDA_PINNED=1" "BITNET_CUDA_SCHED=spin" "BITNET_CUDA_SCHED=block" "BITNET_CUDA_PINNED=0 BITNET_CUDA_SCHED=spin"; do
    echo "== round $round: $v"
    env $v BITNET_CUDA_STEP_GAPS=1 bash -c "$(declare -f b); B=$B; b -b 1,64 --kv q8 --gpu-head int8"
  done
  echo "== round $round: bulk head, spin"
  BITNET_CUDA_HEAD_WG=bulk BITNET_CUDA_SCHED=spin bash -c "$(declare -f b); B=$B; b -b 64,128 --kv q8 --gpu-head int8"
  echo "== round $round: f16, spin"
  BITNET_CUDA_SCHED=spin bash -c "$(declare -f b); B=$B; b -b 1,64"
  echo "== round $round: f16, PINNED=0"
  BITNET_CUDA_PINNED=0 bash -c "$(declare -f b); B=$B; b -b 1,64"
done
