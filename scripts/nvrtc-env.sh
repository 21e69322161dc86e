#!/usr/bin/env bash
# Fetches (once) NVIDIA's run-time CUDA compiler, NVRTC, from its PyPI wheel into target/nvrtc, so
# that the CUDA kernels' compile test (crates/bitnet-cuda/tests/compile.rs) runs on machines
# without a GPU or a CUDA toolkit. The last line printed is the directory holding libnvrtc.so.13.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=13.0.88
dir=target/nvrtc
lib="$PWD/$dir/nvidia/cu13/lib"
if [ -f "$lib/libnvrtc.so.13" ]; then
  echo "$lib"
  exit 0
fi
rm -rf "$dir"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$dir/wheel" "nvidia-cuda-nvrtc==$VERSION" >&2
python3 -m zipfile -e "$dir"/wheel/*.whl "$dir" >&2
test -f "$lib/libnvrtc.so.13"
echo "$lib"
