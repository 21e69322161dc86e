#!/usr/bin/env bash
# The GPU half of the test and benchmark suite, run on a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh BIN_DIR [tests|bench|quick|ncu|all]
#
# BIN_DIR holds the release `bitnet` binary, the bitnet-cuda test binaries (compile,
# conformance, parity) and the compiled kernels, built elsewhere with `scripts/gpu-build.sh` (no
# Rust or network is needed here). Tests run with BITNET_REQUIRE_GPU=1, so a missing GPU fails
# instead of skipping; TESTS="..." names the test binaries to run (default all three; empty:
# none, e.g. for `tests` to run only the server and CLI checks).
# Benchmarks: the synthetic 2B4T-shaped model written by transformers (random bf16 masters,
# bench/gpu/hf_peer.py, which also times transformers itself), converted by `bitnet convert`;
# `quick` times our engine alone on `bitnet convert --synthetic 2b4t` (same shapes), and with
# PROFILE=1 adds a per-kernel device-time profile; AB=VAR also times `quick` with VAR=0 and VAR=1
# (an A/B of a switch such as BITNET_CUDA_PDL); `ncu` reads Nsight Compute's counters for one
# decode layer's kernels (the four fused GEMVs, attention), the head and one prefill pass.
set -uo pipefail
BIN=$(realpath "${1:?usage: gpu-check.sh BIN_DIR [tests|bench|all]}")
WHAT=${2:-all}
LOG=${OUT:-/tmp}
# The kernels' machine code, compiled by scripts/gpu-build.sh into BIN_DIR/cache where it could.
export BITNET_REQUIRE_GPU=1 BITNET_CACHE_DIR=${BITNET_CACHE_DIR:-$BIN/cache}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
# The test binaries find the fixtures through the absolute path they were built at.
built_at=$(cat "$BIN/built_at" 2>/dev/null || echo /work/main)
if [ ! -e "$built_at/fixtures" ]; then mkdir -p "$(dirname "$built_at")" && ln -sfn "$PWD" "$built_at"; fi
status=0
if [ "$WHAT" = ncu ]; then
  B="$BIN/bitnet"
  [ -e /tmp/same.gguf ] || "$B" convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
  # Graphs and PDL off, so that every launch is its own kernel; skip the first token's 120 GEMVs.
  export BITNET_CUDA_GRAPHS=0 BITNET_CUDA_PDL=0
  ncu --clock-control none --cache-control none -k regex:'ternary_gemv_norm' -s 240 -c 4 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis "$B" bench -m /tmp/same.gguf --device cuda -p 0 -n 4 -r 1 2>&1 \
    | grep -v "^==PROF==" | grep -E "ternary|Duration|Throughput|Elapsed|Registers|Achieved Occ|Theoretical Occ|Block Limit|Stall|Warp Cycles|Issued|Grid Size|Shared Memory|L2 Hit|L1/TEX Hit|DRAM|Memory \[%\]" | head -150
  ncu --clock-control none --cache-control none -k regex:'attn_vec|head_f16' -s 62 -c 3 \
    --section SpeedOfLight --section LaunchStats --section WarpStateStats "$B" bench -m /tmp/same.gguf \
    --device cuda -p 0 -n 4 -r 1 2>&1 | grep -v "^==PROF==" \
    | grep -E "attn|head|Duration|Throughput|Stall|Warp Cycles|Grid Size|DRAM" | head -60
  # One 256-token prefill pass: the tensor-core GEMMs, norm+quantize and attention.
  ncu --clock-control none --cache-control none -k regex:'ternary_mma|attn_vec|norm_quant' -s 40 -c 6 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats "$B" bench \
    -m /tmp/same.gguf --device cuda -p 256 -n 0 -r 1 2>&1 | grep -v "^==PROF==" \
    | grep -E "mma|attn|norm_quant|Duration|Registers|Theoretical Occ|Achieved Occ|Grid Size" | head -60
  exit 0
fi
if [ "$WHAT" != bench ] && [ "$WHAT" != quick ]; then
  for t in ${TESTS-compile conformance parity}; do
    echo "== test $t"
    "$BIN/$t" --test-threads=1 2>&1 | tail -25 || status=1
  done
fi
if [ "$WHAT" != bench ] && [ "$WHAT" != quick ]; then
  echo "== bitnet serve --device cuda: concurrent greedy completions equal the CPU's"
  "$BIN/bitnet" serve --device cuda --port 18080 > /tmp/serve.log 2>&1 &
  spid=$!
  for _ in $(seq 1 60); do curl -sf localhost:18080/health > /dev/null && break; sleep 0.5; done
  for i in 1 2 3 4 5 6 7 8; do
    curl -sf localhost:18080/v1/completions -H 'content-type: application/json' \
      -d "{\"prompt\": \"ROMEO $i:\", \"max_tokens\": 24, \"temperature\": 0}" > /tmp/srv$i.json &
  done
  wait $(jobs -p | grep -v "^$spid$") 2>/dev/null
  for i in 1 2 3 4 5 6 7 8; do
    want=$("$BIN/bitnet" generate --device cpu --prompt "ROMEO $i:" -n 24 --temperature 0 2>/dev/null)
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"], end="")' /tmp/srv$i.json)
    if [ "$got" = "$want" ]; then echo "request $i: same text as the CPU"; else echo "request $i DIFFERS: [$got] vs [$want]"; status=1; fi
  done
  # The next turn of two of them: the prompt goes on from the first request's tokens, so the
  # server takes that request's cache over (the prompt cache; moved to larger storage on the
  # GPU) and prefills only the rest.
  for i in 1 2; do
    p2=$(python3 -c 'import json,sys; print("ROMEO %s:" % sys.argv[2] + json.load(open(sys.argv[1]))["choices"][0]["text"] + " And", end="")' /tmp/srv$i.json $i)
    body=$(python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 24, "temperature": 0}))' "$p2")
    curl -sf localhost:18080/v1/completions -H 'content-type: application/json' -d "$body" > /tmp/srv2-$i.json
    want=$("$BIN/bitnet" generate --device cpu --prompt "$p2" -n 24 --temperature 0 2>/dev/null)
    got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"], end="")' /tmp/srv2-$i.json)
    cached=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["usage"]["prompt_tokens_details"]["cached_tokens"])' /tmp/srv2-$i.json)
    if [ "$cached" -gt 0 ] && [ "$got" = "$want" ]; then echo "next turn $i ($cached prompt tokens from the prompt cache): same text as the CPU"; else echo "next turn $i ($cached cached) FAILED: [$got] vs [$want]"; status=1; fi
  done
  grep -m1 "device" /tmp/serve.log
  kill -INT $spid; wait $spid; echo "server exit: $?"
  echo "== sampling with top-k chosen on the GPU: reproducible by seed"
  for i in 1 2; do
    "$BIN/bitnet" generate --device cuda --prompt "ROMEO:" -n 48 --temperature 0.9 --top-k 40 --seed 7 > /tmp/topk$i.txt 2>/dev/null
  done
  "$BIN/bitnet" generate --device cpu --prompt "ROMEO:" -n 48 --temperature 0.9 --top-k 40 --seed 7 > /tmp/topk-cpu.txt 2>/dev/null
  if [ -s /tmp/topk1.txt ] && cmp -s /tmp/topk1.txt /tmp/topk2.txt; then echo "same seed, same text on the GPU"; else echo "GPU top-k sampling not reproducible"; status=1; fi
  cmp -s /tmp/topk1.txt /tmp/topk-cpu.txt && echo "(and the CPU's text)" || echo "(differs from the CPU's text: logits differ in the last bits, so draws may)"
fi
if [ "$WHAT" != tests ]; then
  B="$BIN/bitnet"
  if [ "$WHAT" = quick ]; then
    "$B" convert --synthetic 2b4t -o /tmp/same.gguf 2>&1 | tail -1
  else
    echo "== the shared weights (transformers, random bf16 masters) and our conversion"
    python3 bench/gpu/hf_peer.py write /tmp/hf2b4t 2>&1 | tail -2
    time "$B" convert --model /tmp/hf2b4t -o /tmp/same.gguf --weights i2_s --head f16 2>&1 | tail -2
  fi
  if [ -n "${AB:-}" ]; then
    for v in 0 1; do
      echo "== $AB=$v"
      env "$AB=$v" "$B" bench -m /tmp/same.gguf --device cuda -p 512 -n 128 -r 5 -b 1,64 --depth 512 -o md 2>&1 | tail -5
    done
  fi
  echo "== bitnet bench, f16 head"
  "$B" bench -m /tmp/same.gguf --device cuda -p 128,512 -n 128 -r 5 -b 1,16,64 --depth 512 -o md 2>&1 | tee "$LOG/bench-f16.md" | tail -8
  echo "== bitnet bench, int8 head"
  "$B" bench -m /tmp/same.gguf --device cuda --gpu-head int8 -p 0 -n 128 -r 5 -b 1,64 --depth 512 -o md 2>&1 | tee "$LOG/bench-i8.md" | tail -5
  if [ "$WHAT" != quick ]; then
    echo "== transformers BitNetForCausalLM on the same weights"
    timeout "${PEER_TIMEOUT:-300}" python3 bench/gpu/hf_peer.py time /tmp/hf2b4t 2>&1 | tail -3 | tee "$LOG/peer.json"
  fi
  if [ "$WHAT" = quick ] && [ "${PROFILE:-0}" = 1 ]; then
    echo "== per-kernel profile (synchronized launches, no graphs): pp512; tg64; tg16 at batch 64, depth 512"
    for args in "-p 512 -n 0" "-p 0 -n 64" "-p 0 -n 16 -b 64 --depth 512"; do
      BITNET_CUDA_PROFILE=1 "$B" bench -m /tmp/same.gguf --device cuda -r 1 $args 2>&1 | grep -A12 "kernel profile"
    done
  fi
  echo "== greedy text through the CLI on the GPU vs the CPU (bundled model)"
  "$B" generate --prompt "ROMEO:" -n 24 --temperature 0 --device cuda > /tmp/g.txt 2>/dev/null
  "$B" generate --prompt "ROMEO:" -n 24 --temperature 0 --device cpu > /tmp/c.txt 2>/dev/null
  cmp /tmp/g.txt /tmp/c.txt && echo "same greedy text on GPU and CPU" || { echo "GPU and CPU greedy text differ"; cat /tmp/g.txt /tmp/c.txt; status=1; }
fi
exit $status
