#!/usr/bin/env bash
# Session 43, call 3: the committed build (two-tile bulk head, the split kernels' loads together):
# issue 5's configurations on the synthetic model, the heads' conformance without the bulk
# copies, then the whole GPU suite with transformers on the same weights. Run as .gpu/run.sh.
cd "$(dirname "$0")/.."  # run as .gpu/run.sh
. bench/gpu/s42-common.sh
echo "== conformance heads, nobulk"; BITNET_CUDA_HEAD_WG=nobulk timeout 100 .gpu/conformance --test-threads=1 head 2>&1 | grep -E "^test |test result|panicked|left|right" | tail -4
for round in 1 2 3; do
  echo "== round $round q8 int8"; b -n 32 -b 64,128 --kv q8 --gpu-head int8 | grep ' b'
  echo "== round $round b1 int8, f16"; b -n 64 -b 1 --gpu-head int8 | grep ' b'; b -n 64 -b 1 | grep ' b'
done
echo "== prefill"; timeout 100 $B bench -m /tmp/same.gguf --device cuda -p 512 -n 0 -r 3 -o md 2>&1 | grep pp
PEER_TIMEOUT=120 timeout 400 bash scripts/gpu-check.sh .gpu all 2>&1 | grep -vE "^\s*$" | tail -60
