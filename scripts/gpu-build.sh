#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine into DIR (default .gpu, git-ignored):
# the release `bitnet` binary and the bitnet-cuda test binaries, stripped. Needs no CUDA here.
set -euo pipefail
DIR=${1:-.gpu}
mkdir -p "$DIR"
cargo build --release -p bitnet-cli
cp target/release/bitnet "$DIR/bitnet"
for t in compile conformance parity; do
  exe=$(cargo test --release -p bitnet-cuda --test "$t" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])' | tail -1)
  cp "$exe" "$DIR/$t"
done
strip "$DIR"/* 2>/dev/null || true
# The kernels' machine code for the GPU machine's architecture (ARCH, default sm_90: H100/H200),
# so that it does not spend its first minute compiling them: scripts/gpu-check.sh points
# BITNET_CACHE_DIR at DIR/cache. NVRTC from its PyPI wheel; without it the GPU machine compiles.
# Compiled afresh each time, so that no machine code of earlier sources travels too (what
# goes to the GPU machine is limited to 64 MiB with the tree).
if lib=$(bash scripts/nvrtc-env.sh | tail -n 1); then
  rm -rf "$DIR/cache"
  LD_LIBRARY_PATH="$lib" BITNET_CACHE_DIR="$DIR/cache" \
    cargo run --release -q -p bitnet-cuda --example precompile -- "${ARCH:-sm_90}"
fi
pwd > "$DIR/built_at"
ls -la "$DIR"
