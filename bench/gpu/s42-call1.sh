#!/usr/bin/env bash
# Session 42, call 1: greedy tokens chosen inside the warpgroup heads (`wg_finish`,
# `head_keys_tokens`; BITNET_CUDA_HEAD_GREEDY=0: logits and the argmax kernel as before) and
# greedy steps launched ahead of their calls (BITNET_CUDA_AHEAD=0: one at a time as before).
# Run as .gpu/run.sh (carry .gpu, built by scripts/gpu-build.sh).
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance"; timeout 200 .gpu/conformance --test-threads=1 2>&1 | grep -E "^test |test result|panicked|skipped|left|right" | tail -14
echo "== parity"; timeout 150 .gpu/parity --test-threads=2 2>&1 | grep -E "^test |test result|panicked|equal|left|right" | tail -22
echo "== greedy text through the CLI (steps launched ahead) on the GPU vs the CPU (bundled model)"
$B generate --prompt "ROMEO:" -n 40 --temperature 0 --device cuda > /tmp/g.txt 2>/dev/null
$B generate --prompt "ROMEO:" -n 40 --temperature 0 --device cpu > /tmp/c.txt 2>/dev/null
cmp /tmp/g.txt /tmp/c.txt && echo "same greedy text on GPU and CPU" || { echo "GPU and CPU greedy text differ"; cat /tmp/g.txt /tmp/c.txt; }
for round in 1 2; do
  for v in "BITNET_CUDA_HEAD_GREEDY=0 BITNET_CUDA_AHEAD=0" "BITNET_CUDA_HEAD_GREEDY=1 BITNET_CUDA_AHEAD=0" "BITNET_CUDA_HEAD_GREEDY=0 BITNET_CUDA_AHEAD=1" "BITNET_CUDA_HEAD_GREEDY=1 BITNET_CUDA_AHEAD=1"; do
    echo "== round $round: $v q8 int8"
    env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64,128 --kv q8 --gpu-head int8"
    [ $round = 1 ] && { echo "== round $round: $v f16 b64"; env $v bash -c "$(declare -f b); B=$B; b -n 32 -b 64"; }
    echo "== round $round: $v int8 b1"
    env $v bash -c "$(declare -f b); B=$B; b -n 64 -b 1 --gpu-head int8 | grep b1"
  done
done
for g in 0 1; do
  echo "== profile HEAD_GREEDY=$g b64 q8 int8"
  BITNET_CUDA_HEAD_GREEDY=$g BITNET_CUDA_PROFILE=1 timeout 120 $B bench -m /tmp/same.gguf --device cuda -p 0 -n 8 -r 1 -b 64 --depth 64 --kv q8 --gpu-head int8 2>&1 | grep -iE "head|argmax|split_rows|wg_tile|keys" | head -12
done
